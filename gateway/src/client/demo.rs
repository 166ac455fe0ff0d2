//! `GET /demo`: a browser client for trying a hub by hand, and `GET /client.js`, the reliable
//! client it runs on. Two static files (`demo.html`, plain HTML, CSS and JavaScript, and
//! `client.js`, an ES module; no build step) embedded in the binary.
//!
//! The page opens a reliable session (`switchboard.reliable.v1`, docs/reliable.md) on
//! `/ws/{hub}` (`?hub=`, default `demo`) with `connect` from `/client.js`: it shows the session ID
//! from the session's welcome, the connection state and every message it receives (each once, in
//! order, across reconnects), sends what is typed in its text box, and resumes the session after
//! a drop with the client's capped, jittered exponential back-off; a session that ends for good
//! (or cannot be resumed) is replaced by a new one, and the page says so. It writes data into the
//! page only as text (`textContent`), never as markup.
//!
//! **Content-Security-Policy.** The page's one `<script>` (a module) and one `<style>` are
//! inline, allowed by a fresh nonce per response (128 bits from the OS CSPRNG) rather than
//! `'unsafe-inline'`, so markup injected into the page could still run nothing of its own. A
//! nonce rather than a hash of the script because the gateway has no SHA-256 at hand and a hash
//! written into this file would silently go stale at the script's next edit. The script's static
//! `import` of `/client.js` carries the nonce on (HTML's descendant script fetch options;
//! Chromium, which the browser test drives, does), and `script-src` also names `'self'` so the
//! page does not depend on every browser doing so: what this origin serves as JavaScript is
//! `/client.js` alone (every other response of the client port is plain text, metrics or this
//! page, none echoing the request). Everything else is refused: no other script, style, image,
//! frame, form target or `<base>`; `connect-src 'self'` covers the WebSocket to this same host
//! (`ws:`/`wss:` match `'self'` since CSP level 3). Because of the nonce the page is never cached.
//!
//! **`/client.js`** is the same bytes for every request: cached for 5 minutes (a gateway upgrade
//! reaches browsers that soon), `nosniff` (so it runs only as the JavaScript it says it is), and
//! `Access-Control-Allow-Origin: *`, because a module import from another origin is a CORS
//! request and an application served elsewhere may import the client from its gateway: the file
//! is public and no credentials go with it. It carries no CSP of its own: a policy on a script
//! response would bind a worker that loads it (and forbid its WebSocket), nothing else.

use base64::{engine::general_purpose::STANDARD, Engine};
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::http::{text, Body};

/// The page; every [`NONCE_SLOT`] in it is replaced by the response's nonce.
const PAGE: &str = include_str!("demo.html");

/// The reliable-session client (an ES module) the page imports, served as it is.
const CLIENT_JS: &str = include_str!("client.js");

/// Where the nonce goes: the `nonce` attributes of the `<script>` and `<style>` elements.
pub(crate) const NONCE_SLOT: &str = "__CSP_NONCE__";

/// The page with its headers, or a 500 if the OS has no randomness to give.
pub(crate) fn page() -> Response<Body> {
    nonced(PAGE, SCRIPTS_FROM_SELF)
}

/// The page's `script-src` beyond its nonce: this origin, for `/client.js`.
const SCRIPTS_FROM_SELF: &str = "'self' ";

/// `GET /client.js`: the reliable client, with the headers above.
pub(crate) fn client_js() -> Response<Body> {
    let mut r = Response::new(Full::new(CLIENT_JS.into()));
    let h = r.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
        (header::CACHE_CONTROL, "public, max-age=300"),
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    r
}

/// An embedded page whose every [`NONCE_SLOT`] is replaced by a fresh nonce, with the strict
/// policy and headers above, and no script but its own (the admin page is served so).
pub(crate) fn with_nonce(page: &str) -> Response<Body> {
    nonced(page, "")
}

/// [`with_nonce`], `script_from` (empty, or sources each followed by a space) added to the
/// nonce in `script-src`.
fn nonced(page: &str, script_from: &str) -> Response<Body> {
    let mut raw = [0u8; 16];
    if let Err(e) = getrandom::fill(&mut raw) {
        tracing::error!(error = %e, "no randomness for a page's CSP nonce");
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no randomness available\n",
        );
    }
    render(page, &STANDARD.encode(raw), script_from)
}

/// The page and its headers for one nonce (base64, so it needs no escaping in HTML or CSP).
fn render(page: &str, nonce: &str, script_from: &str) -> Response<Body> {
    let csp = format!(
        "default-src 'none'; script-src {script_from}'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
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

    fn policy(r: &Response<Body>) -> String {
        r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned()
    }

    #[tokio::test]
    async fn the_page_is_html_with_its_nonce_in_the_policy_and_on_its_script_and_style() {
        let r = render(PAGE, "bm9uY2U=", SCRIPTS_FROM_SELF);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let csp = policy(&r);
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        assert!(csp.contains("script-src 'self' 'nonce-bm9uY2U=';"), "{csp}");
        assert!(csp.contains("style-src 'nonce-bm9uY2U=';"), "{csp}");
        assert!(csp.contains("connect-src 'self';"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        let html = body(r).await;
        assert!(!html.contains(NONCE_SLOT));
        assert!(html.contains(r#"<script type="module" nonce="bm9uY2U=">"#));
        assert!(html.contains(r#"<style nonce="bm9uY2U=">"#));
    }

    #[tokio::test]
    async fn every_response_gets_a_new_nonce() {
        let a = page().headers()[header::CONTENT_SECURITY_POLICY].clone();
        let b = page().headers()[header::CONTENT_SECURITY_POLICY].clone();
        assert_ne!(a, b);
    }

    /// `'self'` is the demo page's, for `/client.js`; other pages (the admin one) run only
    /// their own nonced script.
    #[test]
    fn only_the_demo_page_may_load_scripts_from_its_origin() {
        assert!(policy(&page()).contains("script-src 'self' 'nonce-"));
        let other = policy(&with_nonce("<p>a page</p>"));
        assert!(other.contains("script-src 'nonce-"), "{other}");
        assert!(!other.contains("'self' 'nonce-"), "{other}");
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
        // Its one import is the client this module serves, from this origin.
        assert_eq!(PAGE.matches("import ").count(), 1);
        assert!(PAGE.contains(r#"import { connect } from "/client.js";"#));
    }

    #[tokio::test]
    async fn the_client_is_javascript_importable_from_any_origin_and_cached_briefly() {
        let r = client_js();
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert_eq!(h[header::CACHE_CONTROL], "public, max-age=300");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(!h.contains_key(header::CONTENT_SECURITY_POLICY));
        assert!(!h.contains_key(header::SET_COOKIE));
        assert_eq!(body(r).await, CLIENT_JS);
    }

    /// An ES module with what the page imports, and nothing that evaluates strings or writes
    /// markup.
    #[test]
    fn the_client_is_a_module_exporting_connect() {
        assert!(CLIENT_JS.contains("\nexport function connect("));
        assert!(CLIENT_JS.contains("export const PROTOCOL = \"switchboard.reliable.v1\";"));
        assert!(
            !CLIENT_JS.contains("\nimport "),
            "the client has no dependency"
        );
        for banned in ["eval(", "new Function", "innerHTML", "document."] {
            assert!(!CLIENT_JS.contains(banned), "the client uses {banned}");
        }
    }
}
