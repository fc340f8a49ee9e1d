//! Sender identity, as Knative's `authentication-oidc` feature defines it.
//! With `--oidc-issuer` and `--oidc-jwks`, every addressable requires a bearer
//! JWT signed by a key of that JWKS (RS256/384/512, ES256/384, PS256/384/512),
//! with that issuer, unexpired, whose `aud` is the addressable's audience
//! (`<group>/<kind>/<namespace>/<name>`, lower case).
//!
//! Spate's own deliveries to its own addressables (a Trigger to a Broker, a
//! Sequence's steps, sources to a Broker) carry a token Spate issues for the
//! sender's identity (`system:serviceaccount:<ns>:<name>-oidc-<group>-<kind>`),
//! signed with a P-256 key made at start and accepted by this instance only
//! (every instance delivers to its own data plane).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How long a token Spate issues for itself is valid; reused until a minute before.
const OWN_TOKEN_LIFETIME: Duration = Duration::from_secs(600);

#[derive(Debug, Error)]
pub enum OidcError {
    #[error("reading the JWKS {0}: {1}")]
    Read(String, String),
    #[error("the JWKS {0} is not a JSON Web Key Set: {1}")]
    Parse(String, String),
    #[error("the JWKS {0} holds no usable signing key (RSA, or EC P-256/P-384)")]
    NoKeys(String),
    #[error("--oidc-issuer and --oidc-jwks must be given together")]
    Half,
    #[error("cannot make the signing key for Spate's own tokens")]
    OwnKey,
}

/// Why a request is not authenticated (401).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Unauthenticated {
    #[error("missing bearer token (Authorization: Bearer <JWT>)")]
    Missing,
    #[error("the token is not valid: {0}")]
    Invalid(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    iat: u64,
}

#[derive(Deserialize)]
struct Subject {
    sub: String,
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies senders' tokens and issues Spate's own.
pub struct Oidc {
    issuer: String,
    keys: Vec<Key>,
    own_issuer: String,
    own_signing: EncodingKey,
    own_verifying: DecodingKey,
    /// (subject, audience) → (token, valid until).
    issued: Mutex<HashMap<(String, String), (String, u64)>>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Reads a JWKS from a file or an `http(s)://` URL.
async fn read_jwks(source: &str) -> Result<String, OidcError> {
    if source.starts_with("http://") || source.starts_with("https://") {
        let r = reqwest::get(source).await.map_err(|e| OidcError::Read(source.into(), e.to_string()))?;
        let r = r.error_for_status().map_err(|e| OidcError::Read(source.into(), e.to_string()))?;
        r.text().await.map_err(|e| OidcError::Read(source.into(), e.to_string()))
    } else {
        tokio::fs::read_to_string(source).await.map_err(|e| OidcError::Read(source.into(), e.to_string()))
    }
}

fn keys_of(set: &JwkSet) -> Vec<Key> {
    set.keys
        .iter()
        .filter_map(|jwk| {
            let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (AlgorithmParameters::RSA(_), Some(a)) => format!("{a:?}").parse().ok()?,
                (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
                (AlgorithmParameters::EllipticCurve(ec), _) => match ec.curve {
                    EllipticCurve::P256 => Algorithm::ES256,
                    EllipticCurve::P384 => Algorithm::ES384,
                    _ => return None,
                },
                _ => return None,
            };
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some(Key { kid: jwk.common.key_id.clone(), alg, key })
        })
        .collect()
}

impl Oidc {
    /// From the two flags (both or neither).
    pub async fn from_flags(
        issuer: Option<&str>,
        jwks: Option<&str>,
        own_issuer: String,
    ) -> Result<Option<Oidc>, OidcError> {
        match (issuer, jwks) {
            (None, None) => Ok(None),
            (Some(i), Some(j)) => Ok(Some(Oidc::load(i, j, own_issuer).await?)),
            _ => Err(OidcError::Half),
        }
    }

    pub async fn load(issuer: &str, jwks: &str, own_issuer: String) -> Result<Oidc, OidcError> {
        let text = read_jwks(jwks).await?;
        let set: JwkSet = serde_json::from_str(&text).map_err(|e| OidcError::Parse(jwks.into(), e.to_string()))?;
        let keys = keys_of(&set);
        if keys.is_empty() {
            return Err(OidcError::NoKeys(jwks.into()));
        }
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|_| OidcError::OwnKey)?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| OidcError::OwnKey)?;
        Ok(Oidc {
            issuer: issuer.to_string(),
            keys,
            own_issuer,
            own_signing: EncodingKey::from_ec_der(pkcs8.as_ref()),
            own_verifying: DecodingKey::from_ec_der(pair.public_key().as_ref()),
            issued: Mutex::new(HashMap::new()),
        })
    }

    /// The subject of a valid token for `audience`.
    pub fn verify(&self, authorization: Option<&str>, audience: &str) -> Result<String, Unauthenticated> {
        let token = authorization
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Unauthenticated::Missing)?;
        let header = jsonwebtoken::decode_header(token).map_err(|e| Unauthenticated::Invalid(e.to_string()))?;
        let check = |key: &DecodingKey, alg: Algorithm, issuer: &str| {
            let mut v = Validation::new(alg);
            v.set_issuer(&[issuer]);
            v.set_audience(&[audience]);
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            v.leeway = 30;
            jsonwebtoken::decode::<Subject>(token, key, &v).map(|d| d.claims.sub)
        };
        if header.alg == Algorithm::ES256
            && let Ok(sub) = check(&self.own_verifying, Algorithm::ES256, &self.own_issuer)
        {
            return Ok(sub);
        }
        let mut last = "no key of the JWKS matches the token".to_string();
        for k in self.keys.iter().filter(|k| k.alg == header.alg) {
            if header.kid.is_some() && k.kid.is_some() && header.kid != k.kid {
                continue;
            }
            match check(&k.key, k.alg, &self.issuer) {
                Ok(sub) => return Ok(sub),
                Err(e) => last = e.to_string(),
            }
        }
        Err(Unauthenticated::Invalid(last))
    }

    /// A token for Spate's own sender `subject` to `audience` (reused while fresh).
    pub fn issue(&self, subject: &str, audience: &str) -> Option<String> {
        let t = now();
        let key = (subject.to_string(), audience.to_string());
        let mut cache = self.issued.lock().expect("token cache");
        if let Some((token, until)) = cache.get(&key)
            && *until > t + 60
        {
            return Some(token.clone());
        }
        let exp = t + OWN_TOKEN_LIFETIME.as_secs();
        let claims = Claims { iss: self.own_issuer.clone(), sub: subject.into(), aud: audience.into(), exp, iat: t };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.own_signing).ok()?;
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(key, (token.clone(), exp));
        Some(token)
    }
}
