//! Typed records through autosurgeon, the Automerge team's crate for
//! mapping Rust types onto documents: `#[derive(Reconcile, Hydrate)]` on a
//! struct, and a record can be created, updated and read as that struct.
//! Reconciling diffs the struct against the document, so an update writes
//! only the fields that changed and merges with concurrent edits field by
//! field.
//!
//! ```
//! use accord_engine::autosurgeon::{Hydrate, Reconcile};
//! use accord_engine::Replica;
//!
//! #[derive(Debug, Clone, PartialEq, Reconcile, Hydrate)]
//! struct Contact {
//!     name: String,
//!     email: Option<String>,
//! }
//!
//! let replica = Replica::open_in_memory()?;
//! let mut ada = Contact { name: "Ada".into(), email: None };
//! let id = replica.create_typed("contacts", &ada)?;
//! ada.email = Some("ada@example.org".into());
//! replica.update_typed(&id, &ada, Some("add email"))?; // writes only the email
//! assert_eq!(replica.get_typed::<Contact>(&id)?, ada);
//! # Ok::<(), accord_engine::Error>(())
//! ```

use autosurgeon::{Hydrate, Reconcile};

use super::Replica;
use crate::error::{Error, Result};
use crate::id::DocId;

impl Replica {
    /// Creates a record holding `value`.
    pub fn create_typed<T: Reconcile>(&self, collection: &str, value: &T) -> Result<DocId> {
        self.create_with(collection, None, |tx| autosurgeon::reconcile(tx, value))
    }

    /// Makes the record equal to `value`, writing only what differs.
    pub fn update_typed<T: Reconcile>(
        &self,
        id: &DocId,
        value: &T,
        message: Option<&str>,
    ) -> Result<()> {
        self.change(id, message, |tx| autosurgeon::reconcile(tx, value))
    }

    /// Reads the record as a `T`.
    pub fn get_typed<T: Hydrate>(&self, id: &DocId) -> Result<T> {
        self.read(id, |doc, _| autosurgeon::hydrate(doc))?
            .map_err(|e| Error::Hydrate {
                doc: *id,
                reason: e.to_string(),
            })
    }
}
