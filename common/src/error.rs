//! Errors as one line for people.

/// An error with its causes, as `a: b: c`, a cause already in the text
/// before it left out (a refused TLS handshake says why only at the end of
/// the chain; many errors repeat their source in their own message).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let s = cause.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);

    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn causes_follow_once_each() {
        let e = E(
            "transport error",
            Some(Box::new(E(
                "handshake failed: invalid peer certificate",
                Some(Box::new(E("invalid peer certificate", None))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "transport error: handshake failed: invalid peer certificate"
        );
        assert_eq!(error_chain(&E("alone", None)), "alone");
    }
}
