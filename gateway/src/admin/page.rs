//! `GET /admin`: the operator's page (`admin.html`, plain HTML, CSS and JavaScript, no build
//! step), embedded in the binary and served like `/demo`: one inline `<script>` and `<style>`
//! allowed by a fresh nonce per response, everything else refused by the policy
//! (`connect-src 'self'` lets it call the API on this port). The page holds no data: it polls
//! the API every 1.5 s with the token typed into it (kept in `sessionStorage`, so it leaves
//! with the tab) and writes what it gets only as text (`textContent`).

use http::Response;

use crate::client::{demo::with_nonce, http::Body};

const PAGE: &str = include_str!("admin.html");

pub(super) fn page() -> Response<Body> {
    with_nonce(PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::demo::NONCE_SLOT;

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
            "localStorage",
        ] {
            assert!(!PAGE.contains(banned), "the page uses {banned}");
        }
    }

    #[test]
    fn every_response_has_its_own_nonce_in_a_strict_policy() {
        let a = page();
        let b = page();
        let csp = |r: &Response<Body>| r.headers()[http::header::CONTENT_SECURITY_POLICY].clone();
        assert_ne!(csp(&a), csp(&b));
        let policy = csp(&a).to_str().unwrap().to_owned();
        assert!(policy.contains("connect-src 'self'"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
    }
}
