//! The relay URLs a driver connects to, in order: the one given to
//! [`crate::Replica::connect`], then [`super::ConnectOptions::fallback_urls`].
//!
//! The driver asks for the URL of each attempt here and moves on after an
//! attempt that failed or a connection that ended, wrapping around after
//! the last. It knows nothing of sockets or backoff: the task decides when
//! the next attempt starts.

/// The URLs to try, and the one of the current (or next) attempt.
#[derive(Debug, Clone)]
pub(super) struct Relays {
    /// The `connect` URL, then the fallbacks; never empty.
    urls: Vec<String>,
    /// The index in `urls` of the current or next attempt's URL.
    current: usize,
}

impl Relays {
    /// `first`, then `fallbacks` in their order.
    pub(super) fn new(first: &str, fallbacks: &[String]) -> Self {
        let mut urls = Vec::with_capacity(1 + fallbacks.len());
        urls.push(first.to_owned());
        urls.extend(fallbacks.iter().cloned());
        Relays { urls, current: 0 }
    }

    /// The URL of the current attempt (or connection).
    pub(super) fn current(&self) -> &str {
        &self.urls[self.current]
    }

    /// The next attempt goes to the next URL, after the last the first.
    pub(super) fn advance(&mut self) {
        self.current = (self.current + 1) % self.urls.len();
    }

    /// How many URLs there are (at least one).
    pub(super) fn len(&self) -> usize {
        self.urls.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Relays;

    #[test]
    fn attempts_go_through_the_urls_in_order_and_wrap_around() {
        let mut relays = Relays::new("ws://a", &["ws://b".into(), "ws://c".into()]);
        assert_eq!(relays.len(), 3);
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(relays.current().to_owned());
            relays.advance();
        }
        assert_eq!(seen, ["ws://a", "ws://b", "ws://c", "ws://a", "ws://b"]);
    }

    #[test]
    fn without_fallbacks_every_attempt_goes_to_the_one_url() {
        let mut relays = Relays::new("ws://a", &[]);
        relays.advance();
        relays.advance();
        assert_eq!((relays.current(), relays.len()), ("ws://a", 1));
    }
}
