//! Client authentication with JWTs: HS256 with a shared secret, RS256/ES256 with a public key,
//! or keys from a JWKS file chosen by `kid`. `exp` and `nbf` are always checked, `aud` and
//! `iss` when configured; `sub` becomes the session's user and a configurable claim its groups.
//!
//! A browser cannot set headers on a WebSocket, so the token may come from
//! `Authorization: Bearer`, a `token` query parameter, or a `Sec-WebSocket-Protocol` value
//! `bearer.<token>`. That value is never echoed back; browsers insist that the server choose
//! one of the offered protocols, so a client also offers [`MARKER_PROTOCOL`], which the
//! gateway chooses when nothing else was (`new WebSocket(url, ["switchboard.bearer",
//! "bearer." + token])`).

use std::{collections::HashMap, path::Path};

use jsonwebtoken::{
    decode, decode_header,
    jwk::{Jwk, JwkSet},
    Algorithm, DecodingKey, Validation,
};

use crate::config::Config;

/// The subprotocol prefix that carries a token.
pub(crate) const PROTOCOL_PREFIX: &str = "bearer.";
/// Offered beside a `bearer.` token, and chosen, so browsers accept the handshake.
pub(crate) const MARKER_PROTOCOL: &str = "switchboard.bearer";

/// Why a token was refused; the text goes to the client (never the token itself).
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwtError {
    #[error("missing token: send Authorization: Bearer, ?token=, or a bearer.<token> subprotocol")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token has the wrong audience")]
    Audience,
    #[error("token has the wrong issuer")]
    Issuer,
    #[error("token signature is invalid")]
    Signature,
    #[error("token has no subject (sub)")]
    NoSubject,
    #[error("token has no expiry (exp)")]
    NoExpiry,
    #[error("malformed token")]
    Malformed,
    #[error("no key for this token")]
    UnknownKey,
}

/// What could not be loaded at start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwtConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Key { path: String, reason: String },
}

/// The claims a session takes from a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

pub(crate) struct JwtVerifier {
    keys: Keys,
    audience: Option<String>,
    issuer: Option<String>,
    groups_claim: String,
}

enum Keys {
    One(DecodingKey, Algorithm),
    ByKid(HashMap<String, (DecodingKey, Algorithm)>),
}

impl JwtVerifier {
    /// The verifier the configuration asks for, if any.
    pub(crate) fn from_config(c: &Config) -> Result<Option<Self>, JwtConfigError> {
        let keys = if let Some(secret) = &c.jwt_secret {
            let key =
                DecodingKey::from_secret(secret.as_bytes()).map_err(|e| JwtConfigError::Key {
                    path: "--jwt-secret".into(),
                    reason: e.to_string(),
                })?;
            Keys::One(key, Algorithm::HS256)
        } else if let Some(path) = &c.jwt_public_key {
            let pem = read(path)?;
            let key_err = |reason: String| JwtConfigError::Key {
                path: path.display().to_string(),
                reason,
            };
            if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                Keys::One(k, Algorithm::RS256)
            } else {
                let k = DecodingKey::from_ec_pem(&pem)
                    .map_err(|e| key_err(format!("neither an RSA nor an EC public key: {e}")))?;
                Keys::One(k, Algorithm::ES256)
            }
        } else if let Some(path) = &c.jwt_jwks {
            let text = read(path)?;
            let set: JwkSet = serde_json::from_slice(&text).map_err(|e| JwtConfigError::Key {
                path: path.display().to_string(),
                reason: format!("not a JWKS: {e}"),
            })?;
            let mut by_kid = HashMap::new();
            for jwk in &set.keys {
                let (Some(kid), Some(alg)) = (jwk.common.key_id.clone(), jwk_algorithm(jwk)) else {
                    continue;
                };
                if let Ok(k) = DecodingKey::from_jwk(jwk) {
                    by_kid.insert(kid, (k, alg));
                }
            }
            if by_kid.is_empty() {
                return Err(JwtConfigError::Key {
                    path: path.display().to_string(),
                    reason: "no usable RS256/ES256 key with a kid".into(),
                });
            }
            Keys::ByKid(by_kid)
        } else {
            return Ok(None);
        };
        Ok(Some(Self {
            keys,
            audience: c.jwt_audience.clone(),
            issuer: c.jwt_issuer.clone(),
            groups_claim: c.jwt_groups_claim.clone(),
        }))
    }

    pub(crate) fn verify(&self, token: &str) -> Result<Identity, JwtError> {
        let (key, alg) = match &self.keys {
            Keys::One(k, a) => (k, *a),
            Keys::ByKid(keys) => {
                let header = decode_header(token).map_err(|_| JwtError::Malformed)?;
                let kid = header.kid.ok_or(JwtError::UnknownKey)?;
                let (k, a) = keys.get(&kid).ok_or(JwtError::UnknownKey)?;
                (k, *a)
            }
        };
        let mut v = Validation::new(alg);
        v.validate_nbf = true;
        v.leeway = 5;
        // A configured audience or issuer must be present, not only right when present:
        // otherwise a token that leaves the claim out would pass the check.
        let mut required = vec!["exp", "sub"];
        if self.audience.is_some() {
            required.push("aud");
        }
        if self.issuer.is_some() {
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
        }
        let data =
            decode::<serde_json::Map<String, serde_json::Value>>(token, key, &v).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::ExpiredSignature => JwtError::Expired,
                    K::ImmatureSignature => JwtError::NotYetValid,
                    K::InvalidAudience => JwtError::Audience,
                    K::InvalidIssuer => JwtError::Issuer,
                    K::InvalidSignature | K::InvalidAlgorithm => JwtError::Signature,
                    K::MissingRequiredClaim(c) if c == "sub" => JwtError::NoSubject,
                    K::MissingRequiredClaim(c) if c == "exp" => JwtError::NoExpiry,
                    K::MissingRequiredClaim(c) if c == "iss" => JwtError::Issuer,
                    K::MissingRequiredClaim(c) if c == "aud" => JwtError::Audience,
                    _ => JwtError::Malformed,
                }
            })?;
        let claims = data.claims;
        let user = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty())
            .ok_or(JwtError::NoSubject)?
            .to_owned();
        let groups = claims
            .get(&self.groups_claim)
            .and_then(|g| g.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Identity { user, groups })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, JwtConfigError> {
    std::fs::read(path).map_err(|source| JwtConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters as P, EllipticCurve};
    match &jwk.algorithm {
        P::RSA(_) => Some(Algorithm::RS256),
        P::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Some(Algorithm::ES256),
        _ => None,
    }
}

/// Finds a token in the request: the Authorization header, the `token` query parameter, or a
/// `bearer.` subprotocol.
pub(crate) fn find_token<'a>(
    authorization: Option<&'a str>,
    query: Option<&'a str>,
    subprotocols: &'a [String],
) -> Option<std::borrow::Cow<'a, str>> {
    if let Some(t) = authorization.and_then(|a| a.strip_prefix("Bearer ")) {
        return Some(t.trim().into());
    }
    if let Some(q) = query {
        for pair in q.split('&') {
            if let Some(v) = pair.strip_prefix("token=") {
                // JWTs are base64url and dots: percent-decoding matters only for a stray '%'.
                return Some(percent_decode(v));
            }
        }
    }
    subprotocols
        .iter()
        .find_map(|p| p.strip_prefix(PROTOCOL_PREFIX))
        .map(Into::into)
}

fn percent_decode(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('%') {
        return s.into();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned().into()
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, EncodingKey, Header};

    use super::*;

    fn verifier(aud: Option<&str>) -> JwtVerifier {
        JwtVerifier {
            keys: Keys::One(DecodingKey::from_secret(b"k").unwrap(), Algorithm::HS256),
            audience: aud.map(Into::into),
            issuer: None,
            groups_claim: "groups".into(),
        }
    }

    fn token(claims: serde_json::Value, key: &[u8]) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(key).unwrap(),
        )
        .unwrap()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn a_valid_token_gives_user_and_groups() {
        let t = token(
            serde_json::json!({"sub": "alice", "exp": now() + 60, "groups": ["a", "b"], "aud": "app"}),
            b"k",
        );
        let id = verifier(Some("app")).verify(&t).unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(id.groups, ["a", "b"]);
    }

    #[test]
    fn bad_tokens_say_why() {
        let v = verifier(Some("app"));
        let expired = token(
            serde_json::json!({"sub": "a", "exp": now() - 600, "aud": "app"}),
            b"k",
        );
        assert!(matches!(v.verify(&expired), Err(JwtError::Expired)));
        let wrong_key = token(
            serde_json::json!({"sub": "a", "exp": now() + 60, "aud": "app"}),
            b"x",
        );
        assert!(matches!(v.verify(&wrong_key), Err(JwtError::Signature)));
        let wrong_aud = token(
            serde_json::json!({"sub": "a", "exp": now() + 60, "aud": "other"}),
            b"k",
        );
        assert!(matches!(v.verify(&wrong_aud), Err(JwtError::Audience)));
        let early = token(
            serde_json::json!({"sub": "a", "exp": now() + 600, "nbf": now() + 300, "aud": "app"}),
            b"k",
        );
        assert!(matches!(v.verify(&early), Err(JwtError::NotYetValid)));
        assert!(matches!(v.verify("not.a.jwt"), Err(JwtError::Malformed)));
    }

    #[test]
    fn tokens_are_found_in_header_query_or_subprotocol() {
        assert_eq!(
            find_token(Some("Bearer abc"), None, &[]).as_deref(),
            Some("abc")
        );
        assert_eq!(
            find_token(None, Some("x=1&token=a%2Eb"), &[]).as_deref(),
            Some("a.b")
        );
        let protos = vec!["chat".to_string(), "bearer.xyz".to_string()];
        assert_eq!(find_token(None, None, &protos).as_deref(), Some("xyz"));
        assert_eq!(find_token(None, Some("x=1"), &[]), None);
    }

    // ---- asymmetric keys, JWKS, and attacks on the algorithm ---------------------------

    fn testdata(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/jwt")
            .join(name)
    }

    fn configured(args: &[&str]) -> JwtVerifier {
        let mut all = vec!["switchboard-gateway"];
        all.extend_from_slice(args);
        let config = <Config as clap::Parser>::try_parse_from(all).unwrap();
        JwtVerifier::from_config(&config).unwrap().unwrap()
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({"sub": "alice", "exp": now() + 60, "groups": ["g"]})
    }

    /// A token signed with a PEM private key (RSA for RS256, EC for ES256), with `kid`.
    fn signed(alg: Algorithm, key: &str, kid: Option<&str>, claims: &serde_json::Value) -> String {
        let pem = std::fs::read(testdata(key)).unwrap();
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        };
        let mut header = Header::new(alg);
        header.kid = kid.map(Into::into);
        encode(&header, claims, &key).unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn rs256_and_es256_public_keys_verify_their_own_tokens_only() {
        let rsa = configured(&[
            "--jwt-public-key",
            testdata("rsa.pub.pem").to_str().unwrap(),
        ]);
        let t = signed(Algorithm::RS256, "rsa.pem", None, &claims());
        assert_eq!(rsa.verify(&t).unwrap().user, "alice");
        let other = signed(Algorithm::RS256, "rsa2.pem", None, &claims());
        assert!(matches!(rsa.verify(&other), Err(JwtError::Signature)));

        let ec = configured(&["--jwt-public-key", testdata("ec.pub.pem").to_str().unwrap()]);
        let t = signed(Algorithm::ES256, "ec.pem", None, &claims());
        assert_eq!(ec.verify(&t).unwrap().groups, ["g"]);
        // An RS256 token is no ES256 token, whatever it says.
        let rs = signed(Algorithm::RS256, "rsa.pem", None, &claims());
        assert!(matches!(ec.verify(&rs), Err(JwtError::Signature)));
    }

    #[test]
    fn a_jwks_picks_the_key_by_kid_and_refuses_unknown_kids() {
        let v = configured(&["--jwt-jwks", testdata("jwks.json").to_str().unwrap()]);
        for (alg, key, kid) in [
            (Algorithm::RS256, "rsa.pem", "k1"),
            (Algorithm::RS256, "rsa2.pem", "k2"),
            (Algorithm::ES256, "ec.pem", "e1"),
        ] {
            let t = signed(alg, key, Some(kid), &claims());
            assert_eq!(v.verify(&t).unwrap().user, "alice", "kid {kid}");
        }
        let unknown = signed(Algorithm::RS256, "rsa.pem", Some("k9"), &claims());
        assert!(matches!(v.verify(&unknown), Err(JwtError::UnknownKey)));
        let no_kid = signed(Algorithm::RS256, "rsa.pem", None, &claims());
        assert!(matches!(v.verify(&no_kid), Err(JwtError::UnknownKey)));
        // The kid names k1, the signature is k2's.
        let swapped = signed(Algorithm::RS256, "rsa2.pem", Some("k1"), &claims());
        assert!(matches!(v.verify(&swapped), Err(JwtError::Signature)));
    }

    #[test]
    fn after_a_key_rotation_tokens_of_the_retired_kid_are_refused() {
        let before = configured(&["--jwt-jwks", testdata("jwks.json").to_str().unwrap()]);
        let after = configured(&[
            "--jwt-jwks",
            testdata("jwks-rotated.json").to_str().unwrap(),
        ]);
        let old = signed(Algorithm::RS256, "rsa.pem", Some("k1"), &claims());
        let new = signed(Algorithm::RS256, "rsa2.pem", Some("k2"), &claims());
        // While both are published, both verify; once k1 is retired, only k2 does.
        assert!(before.verify(&old).is_ok() && before.verify(&new).is_ok());
        assert!(matches!(after.verify(&old), Err(JwtError::UnknownKey)));
        assert_eq!(after.verify(&new).unwrap().user, "alice");
    }

    #[test]
    fn a_wrong_or_missing_issuer_is_refused() {
        let key = testdata("rsa.pub.pem");
        let v = configured(&[
            "--jwt-public-key",
            key.to_str().unwrap(),
            "--jwt-issuer",
            "idp",
        ]);
        let mut c = claims();
        c["iss"] = "idp".into();
        assert!(v
            .verify(&signed(Algorithm::RS256, "rsa.pem", None, &c))
            .is_ok());
        c["iss"] = "elsewhere".into();
        let wrong = signed(Algorithm::RS256, "rsa.pem", None, &c);
        assert!(matches!(v.verify(&wrong), Err(JwtError::Issuer)));
        let missing = signed(Algorithm::RS256, "rsa.pem", None, &claims());
        assert!(matches!(v.verify(&missing), Err(JwtError::Issuer)));
    }

    #[test]
    fn a_missing_audience_is_refused_when_one_is_configured() {
        let key = testdata("rsa.pub.pem");
        let v = configured(&[
            "--jwt-public-key",
            key.to_str().unwrap(),
            "--jwt-audience",
            "app",
        ]);
        let missing = signed(Algorithm::RS256, "rsa.pem", None, &claims());
        assert!(matches!(v.verify(&missing), Err(JwtError::Audience)));
        let mut c = claims();
        c["aud"] = "app".into();
        assert!(v
            .verify(&signed(Algorithm::RS256, "rsa.pem", None, &c))
            .is_ok());
    }

    #[test]
    fn alg_none_is_refused() {
        let v = configured(&[
            "--jwt-public-key",
            testdata("rsa.pub.pem").to_str().unwrap(),
        ]);
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64(claims().to_string().as_bytes());
        for t in [format!("{header}.{body}."), format!("{header}.{body}")] {
            assert!(v.verify(&t).is_err(), "{t}");
        }
        // Also where an HMAC secret is configured.
        let h = verifier(None);
        assert!(h.verify(&format!("{header}.{body}.")).is_err());
    }

    #[test]
    fn an_hs256_token_signed_with_the_rsa_public_key_is_refused() {
        // Algorithm confusion: the attacker knows the public key and uses it as an HMAC secret.
        let public = std::fs::read(testdata("rsa.pub.pem")).unwrap();
        let v = configured(&[
            "--jwt-public-key",
            testdata("rsa.pub.pem").to_str().unwrap(),
        ]);
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(&public).unwrap(),
        )
        .unwrap();
        assert!(matches!(v.verify(&forged), Err(JwtError::Signature)));
        let jwks = configured(&["--jwt-jwks", testdata("jwks.json").to_str().unwrap()]);
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let forged = encode(
            &header,
            &claims(),
            &EncodingKey::from_secret(&public).unwrap(),
        )
        .unwrap();
        assert!(matches!(jwks.verify(&forged), Err(JwtError::Signature)));
    }

    #[test]
    fn a_token_without_expiry_or_subject_is_refused() {
        let v = configured(&[
            "--jwt-public-key",
            testdata("rsa.pub.pem").to_str().unwrap(),
        ]);
        let no_exp = signed(
            Algorithm::RS256,
            "rsa.pem",
            None,
            &serde_json::json!({"sub": "alice"}),
        );
        assert!(matches!(v.verify(&no_exp), Err(JwtError::NoExpiry)));
        for c in [
            serde_json::json!({"exp": now() + 60}),
            serde_json::json!({"sub": "", "exp": now() + 60}),
            serde_json::json!({"sub": 7, "exp": now() + 60}),
        ] {
            let t = signed(Algorithm::RS256, "rsa.pem", None, &c);
            assert!(matches!(v.verify(&t), Err(JwtError::NoSubject)), "{c}");
        }
    }
}
