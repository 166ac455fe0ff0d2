//! `GET /demo`: a browser client for trying a hub by hand. One static page (`demo.html`, plain
//! HTML, CSS and JavaScript, no build step) embedded in the binary.
//!
//! The page connects to `/ws/{hub}?welcome=1` (`?hub=`, default `demo`), shows its session ID
//! from the welcome frame it asks for, the connection state and every message it receives, sends
//! what is typed in its text box, and reconnects with capped, jittered exponential back-off.
//! It writes data into the page only as text (`textContent`), never as markup.
//!
//! **Content-Security-Policy.** The page's one `<script>` and one `<style>` are inline, allowed
//! by a fresh nonce per response (128 bits from the OS CSPRNG) rather than `'unsafe-inline'`,
//! so markup injected into the page could still run nothing. A nonce rather than a hash of the
//! script because the gateway has no SHA-256 at hand and a hash written into this file would
//! silently go stale at the script's next edit. Everything else is refused: no other script,
//! style, image, frame, form target or `<base>`; `connect-src 'self'` covers the WebSocket to
//! this same host (`ws:`/`wss:` match `'self'` since CSP level 3). Because of the nonce the
//! response is never cached.

use base64::{engine::general_purpose::STANDARD, Engine};
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::http::{text, Body};

/// The page; every [`NONCE_SLOT`] in it is replaced by the response's nonce.
const PAGE: &str = include_str!("demo.html");

/// Where the nonce goes: the `nonce` attributes of the `<script>` and `<style>` elements.
pub(crate) const NONCE_SLOT: &str = "__CSP_NONCE__";

/// The page with its headers, or a 500 if the OS has no randomness to give.
pub(crate) fn page() -> Response<Body> {
    with_nonce(PAGE)
}

/// An embedded page whose every [`NONCE_SLOT`] is replaced by a fresh nonce, with the strict
/// policy and headers above (the admin page is served the same way).
pub(crate) fn with_nonce(page: &str) -> Response<Body> {
    let mut raw = [0u8; 16];
    if let Err(e) = getrandom::fill(&mut raw) {
        tracing::error!(error = %e, "no randomness for a page's CSP nonce");
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no randomness available\n",
        );
    }
    render(page, &STANDARD.encode(raw))
}

/// The page and its headers for one nonce (base64, so it needs no escaping in HTML or CSP).
fn render(page: &str, nonce: &str) -> Response<Body> {
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    let mut r = Response::new(Full::new(page.replace(NONCE_SLOT, nonce).into()));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::try_from(csp).expect("a base64 nonce is a valid header value"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn body(r: Response<Body>) -> String {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_page_is_html_with_its_nonce_in_the_policy_and_on_its_script_and_style() {
        let r = render(PAGE, "bm9uY2U=");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        assert!(csp.contains("script-src 'nonce-bm9uY2U=';"), "{csp}");
        assert!(csp.contains("style-src 'nonce-bm9uY2U=';"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        let html = body(r).await;
        assert!(!html.contains(NONCE_SLOT));
        assert!(html.contains(r#"<script nonce="bm9uY2U=">"#));
        assert!(html.contains(r#"<style nonce="bm9uY2U=">"#));
    }

    #[tokio::test]
    async fn every_response_gets_a_new_nonce() {
        let a = page().headers()[header::CONTENT_SECURITY_POLICY].clone();
        let b = page().headers()[header::CONTENT_SECURITY_POLICY].clone();
        assert_ne!(a, b);
    }

    /// What the policy would block, or what could turn data into markup, is not in the page.
    #[test]
    fn the_page_has_one_script_one_style_and_nothing_the_policy_would_refuse() {
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        assert_eq!(PAGE.matches(NONCE_SLOT).count(), 2);
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            " style=",
            " onclick=",
            " onsubmit=",
            " onload=",
            "javascript:",
        ] {
            assert!(!PAGE.contains(banned), "the page uses {banned}");
        }
    }
}
