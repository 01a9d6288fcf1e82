//! Moving records in and out as Automerge binaries: `export`, `import`.

use std::io::Read;
use std::path::Path;

use accord_engine::{DocId, Error};
use anyhow::{anyhow, bail, Context, Result};

use super::Ctx;

/// `accord export`: the whole document in Automerge's binary format, to a
/// file or to stdout (but not to a terminal).
pub fn export(ctx: &mut Ctx, id: &DocId, output: Option<&Path>, force: bool) -> Result<()> {
    let to_stdout = output.is_none_or(|p| p == Path::new("-"));
    if to_stdout && ctx.out.is_terminal() {
        bail!("refusing to write binary data to a terminal; give -o FILE or redirect stdout");
    }
    if let Some(path) = output.filter(|_| !to_stdout) {
        refuse_overwrite(path, force)?;
    }
    let bytes = ctx.replica()?.save(id)?;
    match output {
        Some(path) if !to_stdout => std::fs::write(path, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))?,
        _ => ctx.out.bytes(&bytes)?,
    }
    Ok(())
}

/// `accord import`: a new record from an Automerge document; prints its id.
pub fn import(ctx: &mut Ctx, file: &Path, collection: &str) -> Result<()> {
    accord_engine::replica::check_collection(collection)?;
    let bytes = read_input(file)?;
    if bytes.is_empty() {
        bail!("{} is empty, not an Automerge document", file.display());
    }
    let id = ctx
        .replica()?
        .import(collection, &bytes)
        .map_err(|e| match e {
            Error::NotAutomerge(source) => {
                anyhow!("{} is not an Automerge document: {source}", file.display())
            }
            Error::Guard(accord_engine::guard::GuardError::Invalid { reason }) => {
                anyhow!("{} is not an Automerge document: {reason}", file.display())
            }
            Error::Guard(too_large) => {
                anyhow!("{} is too large to import: {too_large}", file.display())
            }
            other => other.into(),
        })?;
    super::print_new_id(ctx, &id, collection)
}

/// The bytes of a file, or of stdin for `-`.
fn read_input(file: &Path) -> Result<Vec<u8>> {
    if file == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read stdin")?;
        return Ok(bytes);
    }
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}

/// Refuses to replace an existing file unless `--force` was given (the
/// rule `export -o` and `backup` share).
pub fn refuse_overwrite(path: &Path, force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!(
            "{} already exists; give another file name, or --force to overwrite it",
            path.display()
        );
    }
    Ok(())
}
