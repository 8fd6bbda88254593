//! What can go wrong talking to the proxy, and which of it a retry may mend.

use http::{Method, StatusCode};

/// Longest error message from the proxy shown to a person or a log.
const MESSAGE_MAX: usize = 512;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot connect to the proxy at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("TLS handshake with the proxy at {addr} failed: {source}")]
    Handshake { addr: String, source: std::io::Error },
    #[error("HTTP/2 error talking to the proxy: {0}")]
    Http(#[from] hyper::Error),
    #[error(
        "the proxy refused the TLS session ({0}): is this agent's certificate issued by the proxy's client CA, \
         and still valid?"
    )]
    Refused(String),
    #[error("reading the proxy's response: {0}")]
    Body(String),
    #[error("{method} {path}: proxy answered {status} {code}: {message}")]
    Status { method: Method, path: String, status: StatusCode, code: String, message: String },
    #[error("the proxy's response was not understood: {0}")]
    Protocol(String),
    #[error("{method} {path}: no answer from the proxy within {secs} s")]
    Timeout { method: Method, path: String, secs: u64 },
}

/// Text from the proxy made safe to print: control and direction-changing
/// characters (escape sequences that would clear a screen, retitle a
/// window or forge a log line) shown escaped, and the length capped.
pub(crate) fn printable(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MESSAGE_MAX {
            out.push('…');
            break;
        }
        let bidi = matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl ClientError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl ClientError {
    /// Whether the same request may succeed later: the proxy unreachable
    /// or restarting, the connection lost, 429, 5xx. Not: a refused
    /// certificate, a TLS verification failure, any other 4xx.
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Http(_) | ClientError::Body(_) | ClientError::Timeout { .. } => {
                true
            }
            ClientError::Handshake { source, .. } => source.kind() != std::io::ErrorKind::InvalidData,
            ClientError::Status { status, .. } => {
                matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
            }
            ClientError::Tls(_) | ClientError::Refused(_) | ClientError::Protocol(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_text_cannot_drive_a_terminal_or_forge_a_log_line() {
        // Clear the screen, set the window title, a forged second log line,
        // and a right-to-left override.
        let hostile = "denied\x1b[2J\x1b]0;pwned\x07\nINFO backup committed\u{202e}txt.exe";
        let shown = printable(hostile);
        assert!(!shown.chars().any(|c| c.is_control() || c == '\u{202e}'), "{shown:?}");
        assert_eq!(shown, "denied\\u{1b}[2J\\u{1b}]0;pwned\\u{7}\\nINFO backup committed\\u{202e}txt.exe");
        let long = printable(&"x".repeat(10_000));
        assert_eq!(long.chars().count(), MESSAGE_MAX + 1, "capped, with an ellipsis");
        assert_eq!(printable("plain \"quoted\" text é"), "plain \"quoted\" text é");
    }
}
