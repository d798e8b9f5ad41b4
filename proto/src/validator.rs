//! ucanto's authorization rules, with ucanto's error names and messages.
//!
//! This module decides whether an invocation is authorized the way `@ucanto/validator` 10.0.1
//! (Storacha) and 9.1.0 (w3clock) do, and reports failures with the `name` and the exact
//! `message` text the JS produces, because JS clients show that text to users. The two JS
//! versions differ only in `resolveDIDKey` (which we do not support, see below); their messages
//! are identical.
//!
//! # Entry points
//!
//! A service handles one invocation in ucanto's server order:
//!
//! 1. [`single_capability`]: exactly one capability, else [`InvocationCapabilityError`]
//!    (`@ucanto/server` `run`).
//! 2. Route the ability to a handler, else [`HandlerNotFound`].
//! 3. [`check_audience`]: the invocation's `aud` must be the service DID, else
//!    [`InvalidAudience`] (ucanto's and w3clock's `provide`).
//! 4. [`Validator::access`]: a proof chain must authorize the capability, else [`Unauthorized`]
//!    (`@ucanto/validator` `access`).
//!
//! [`Validator::check`] runs all four. Every error implements [`Failure`]: `name()`,
//! `message()` (ucanto's text) and `to_wire()` (the object ucanto's `toJSON` puts in a
//! receipt's `out.error`, without `stack`, which ucanto adds but which is host-specific).
//!
//! # Capabilities
//!
//! Authorization is checked against a [`CapabilityParser`], the counterpart of a ucanto
//! `capability({can, with, nb, derives})` definition, combined with `.or()` and `.derive()`.
//! A [`Descriptor`] gives the ability, a [`Schema`] for `with` and for each `nb` field, and a
//! [`Derives`] rule (the pluggable part: ucanto's default rule, the `@storacha/capabilities`
//! helpers such as `equalWith`, `equalLink`, `equalBlob`, or any closure). [`parsers`] has the
//! w3clock and the Storacha definitions we need.
//!
//! # Semantics (ucanto → here)
//!
//! * **Search.** `claim`/`authorize` explore every proof: each proof's capabilities become
//!   sources; the claimed capability is matched against each source; a match whose `with`
//!   equals the source delegation's issuer is self-issued and ends the chain; otherwise the
//!   match is authorized recursively from that delegation's proofs. All explored paths and
//!   their failures are kept, in ucanto's order, because they make up the message.
//! * **Matching a proof capability** (`resolveCapability`): the proof's `can` covers the
//!   claimed one when equal, `*`, or `ns/*` with the claimed ability starting with `ns/`; else
//!   the proof capability is "unknown". `with: "ucan:*"` (or an equal `with`) resolves to the
//!   claimed resource; any other `with` is kept and judged by the derive rule. `nb` is the
//!   claimed `nb` overlaid with the proof's own `nb` fields, then read with the schema (fields
//!   the schema does not declare are ignored). Then the capability's derive rule must accept
//!   (claimed, delegated), else `EscalatedCapability`.
//! * **Default derive rule** (`defaultDerives`): `with` must be equal (or match a trailing-`*`
//!   prefix), and every `nb` field of the delegated capability must equal the claimed one with
//!   JS `!=` semantics: primitives by value (with JS coercions), objects (links, bytes, lists,
//!   maps) by identity. So a field the proof imposes with a link value never derives, even an
//!   equal link (we reproduce this; w3clock's `clock/advance` delegations restricted to one
//!   event are therefore unusable, exactly as in JS).
//! * **`derive()`** (e.g. `space/info` from `upload/list`): a claimed capability matches either
//!   its own definition or any capability the `from` parser accepts (exact ability), subject to
//!   the derive rule.
//! * **Per-delegation checks** (`validate`), in this order: expired when `exp <= now`
//!   ([`Expired`]); too early when `nbf` is set and `now <= nbf` ([`NotValidBefore`]); then
//!   the signature: `did:key` issuers are verified with their key, the authority's DID with the
//!   authority key ([`InvalidSignature`]); any other issuer (`did:mailto`, other `did:web`) is
//!   accepted only with a `ucan/attest` attestation `{with: authority, nb: {proof: <CID>}}` among
//!   the sibling proofs, issued by the authority (or by a principal the authority delegated
//!   `ucan/attest` to through the validator's local proofs); otherwise [`SessionEscalation`]
//!   when attestations were found but failed, else `DIDKeyResolutionError`.
//! * **Proof alignment**: a proof's `aud` must equal the issuer of the delegation citing it
//!   (`PrincipalAlignmentError`, named `InvalidAudience` on the wire).
//! * **Missing proof blocks**: [`UnavailableProof`] (ucanto's default `resolve`).
//! * **Revocation**: ucanto's `validateAuthorization` hook, called on each complete
//!   authorization; a failure is listed as an invalid proof. Our hook is [`RevocationCheck`],
//!   asked for each delegation of the chain with the principals that may revoke it (as the
//!   Storacha upload service computes them).
//! * **Multiple authorities** (w3clock's `provide`): [`Validator::with_trusted_authority`]
//!   tries each extra authority first and then the service's own; the error reported is the
//!   last attempt's.
//!
//! # Not implemented (and why)
//!
//! * `resolveDIDKey` (resolving a `did:web`/`did:plc` to keys) and `resolve` (fetching proofs
//!   by CID): both need I/O; we behave as ucanto's defaults do (`DIDKeyResolutionError`,
//!   `UnavailableProof`).
//! * `and()` capability groups (amplification): no capability we serve uses them.
//! * Non-Ed25519 `did:key` issuers: their signatures are reported as invalid (ucanto would also
//!   verify RSA keys).
//! * A proof block that is present but is not a UCAN: JS throws from inside the validator (the
//!   server answers `HandlerExecutionError`); we report it as an unavailable proof with the
//!   decode error as its cause.
//! * JS `URL` normalisation of `with` is implemented for the forms that occur (scheme case,
//!   surrounding whitespace, opaque paths, queries and fragments), not for hierarchical
//!   (`scheme://…`) URLs, which keep their text.
//!
//! Our additions, beyond ucanto: a proof-depth limit and a validation budget (ucanto has
//! neither, and explores proofs exhaustively); exceeding them reports the proof as unavailable
//! with the reason as its cause.
//!
//! # Signature caching
//!
//! Signature checks are remembered per (UCAN, verifier) within one `access` call, successes and
//! failures alike. A [`SignatureCache`] ([`Validator::with_signature_cache`], e.g. a
//! [`BoundedSignatureCache`]) also remembers successful checks of *proofs* across calls, because
//! clients send the same delegation chain with every invocation. This is sound because a UCAN's
//! CID is the SHA-256 (or identity) hash of its DAG-CBOR block, and that block holds the
//! signature and every signed field: blocks are hash-checked when built ([`crate::Block`]), so
//! two UCANs with one CID are byte-identical, decode identically and verify identically. An
//! entry is keyed by [`SignatureKey`], a digest of the CID, the DID the verifier speaks for and
//! the key's `did:key`, so a UCAN verified under one key is never taken as signed by another.
//! Only signature verification is skipped: time bounds, proof alignment, attestations,
//! capability derivation and revocation are judged on every call. Failed verifications are
//! never shared, and neither is the invocation's own signature (depth 0): a real invocation is
//! new with every request, so recording it would only push proofs out of the cache.
//!
//! A service may also verify the invocation's own signature before the search, together with
//! other requests' in one batch ([`invocation_signature`], [`Validator::check_with`]). The
//! verdict it passes in is the one the search would reach itself (same key, same payload, same
//! ZIP215 rules, see [`crate::principal::verify_batch`]), valid or not, so the outcome and its
//! error are unchanged; only where the arithmetic happens moves.

use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};

use cid::Cid;

use crate::ipld::Ipld;
use crate::principal::{SignatureCheck, Verifier};
use crate::ucan::{Capability, Delegation, Proof};

/// The ability `ucan/attest` (authority attestations of delegations).
pub const UCAN_ATTEST: &str = "ucan/attest";

/// Default maximum proof depth (the invocation is depth 0, its proofs depth 1, …).
pub const DEFAULT_MAX_DEPTH: usize = 16;

/// Default maximum number of delegations validated (expiry + signature) in one access check.
pub const DEFAULT_MAX_VALIDATIONS: usize = 1024;

// ---------------------------------------------------------------------------------------------
// Failure: what every error can say about itself.
// ---------------------------------------------------------------------------------------------

/// An error as ucanto reports it.
pub trait Failure: fmt::Display {
    /// ucanto's `name` (e.g. `"Unauthorized"`).
    fn name(&self) -> &'static str;

    /// ucanto's `message`, byte-for-byte what the JS produces.
    fn message(&self) -> String;

    /// The object ucanto's `toJSON` writes into a receipt (`out.error`), without `stack`.
    fn to_wire(&self) -> Ipld {
        wire(self.name(), self.message(), Vec::new())
    }
}

fn wire(name: &str, message: String, extra: Vec<(&str, Ipld)>) -> Ipld {
    let mut m = BTreeMap::new();
    m.insert("name".to_string(), Ipld::String(name.to_string()));
    m.insert("message".to_string(), Ipld::String(message));
    for (k, v) in extra {
        m.insert(k.to_string(), v);
    }
    Ipld::Map(m)
}

// ---------------------------------------------------------------------------------------------
// JS values: ucanto works on decoded JS objects; these mirror them closely enough to reproduce
// its key order, stringification, loose equality and object identity.
// ---------------------------------------------------------------------------------------------

/// A decoded value as JS sees it. Maps keep insertion order (DAG-CBOR order when decoded, schema
/// order when produced by a struct schema); objects are shared so `Arc::ptr_eq` is JS identity.
#[derive(Clone, Debug)]
enum Val {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Bytes(Arc<Vec<u8>>),
    Link(Arc<Cid>),
    List(Arc<Vec<Val>>),
    Map(Arc<Vec<(String, Val)>>),
}

/// DAG-CBOR's map key order: shorter first, then bytewise.
fn cbor_key_order(a: &str, b: &str) -> Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

fn sorted_cbor(m: &BTreeMap<String, Ipld>) -> Vec<(&String, &Ipld)> {
    let mut entries: Vec<_> = m.iter().collect();
    entries.sort_by(|a, b| cbor_key_order(a.0, b.0));
    entries
}

/// Largest integer a JS number holds exactly; larger DAG-CBOR integers decode as `BigInt`.
const MAX_SAFE_INTEGER: i128 = (1 << 53) - 1;

impl Val {
    fn from_ipld(v: &Ipld) -> Self {
        match v {
            Ipld::Null => Val::Null,
            Ipld::Bool(b) => Val::Bool(*b),
            Ipld::Integer(i) => Val::Int(*i),
            Ipld::Float(f) => Val::Float(*f),
            Ipld::String(s) => Val::Str(s.clone()),
            Ipld::Bytes(b) => Val::Bytes(Arc::new(b.clone())),
            Ipld::Link(c) => Val::Link(Arc::new(*c)),
            Ipld::List(l) => Val::List(Arc::new(l.iter().map(Val::from_ipld).collect())),
            Ipld::Map(m) => Val::Map(Arc::new(
                sorted_cbor(m)
                    .into_iter()
                    .map(|(k, v)| (k.clone(), Val::from_ipld(v)))
                    .collect(),
            )),
        }
    }

    fn to_ipld(&self) -> Ipld {
        match self {
            Val::Null => Ipld::Null,
            Val::Bool(b) => Ipld::Bool(*b),
            Val::Int(i) => Ipld::Integer(*i),
            Val::Float(f) => Ipld::Float(*f),
            Val::Str(s) => Ipld::String(s.clone()),
            Val::Bytes(b) => Ipld::Bytes(b.to_vec()),
            Val::Link(c) => Ipld::Link(**c),
            Val::List(l) => Ipld::List(l.iter().map(Val::to_ipld).collect()),
            Val::Map(m) => Ipld::Map(m.iter().map(|(k, v)| (k.clone(), v.to_ipld())).collect()),
        }
    }

    fn get(&self, key: &str) -> Option<&Val> {
        match self {
            Val::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn is_object(&self) -> bool {
        matches!(
            self,
            Val::Bytes(_) | Val::Link(_) | Val::List(_) | Val::Map(_)
        )
    }
}

/// The raw capability object as dag-ucan decodes it (keys in DAG-CBOR order).
fn capability_val(cap: &Capability) -> Val {
    Val::from_ipld(&Ipld::Map(cap.to_ipld()))
}

/// JS helpers: `JSON.stringify`, `String()`, `==`, `Date#toString`, ucanto's list formatting.
mod js {
    use super::{MAX_SAFE_INTEGER, Val};
    use std::sync::Arc;

    /// `JSON.stringify(string)`.
    pub(super) fn quote(s: &str) -> String {
        let mut out = String::with_capacity(s.len() + 2);
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// `Number.prototype.toString()`.
    pub(super) fn number(f: f64) -> String {
        if f.is_nan() {
            return "NaN".into();
        }
        if f.is_infinite() {
            return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
        }
        if f == 0.0 {
            return "0".into();
        }
        let sci = format!("{:e}", f.abs());
        let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
        let exp: i64 = exp.parse().unwrap_or(0);
        let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
        let k = digits.len() as i64;
        let n = exp + 1;
        let body = if k <= n && n <= 21 {
            format!("{digits}{}", "0".repeat((n - k) as usize))
        } else if 0 < n && n <= 21 {
            format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
        } else if -6 < n && n <= 0 {
            format!("0.{}{digits}", "0".repeat((-n) as usize))
        } else {
            let e = n - 1;
            let sign = if e >= 0 { '+' } else { '-' };
            if k == 1 {
                format!("{digits}e{sign}{}", e.abs())
            } else {
                format!("{}.{}e{sign}{}", &digits[..1], &digits[1..], e.abs())
            }
        };
        if f < 0.0 { format!("-{body}") } else { body }
    }

    /// `JSON.stringify(value)` (links via `CID#toJSON`, bytes as a `Uint8Array` object).
    pub(super) fn json(v: &Val) -> String {
        let mut out = String::new();
        write_json(v, &mut out);
        out
    }

    fn write_json(v: &Val, out: &mut String) {
        match v {
            Val::Null => out.push_str("null"),
            Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Val::Int(i) => out.push_str(&i.to_string()),
            Val::Float(f) if f.is_finite() => out.push_str(&number(*f)),
            Val::Float(_) => out.push_str("null"),
            Val::Str(s) => out.push_str(&quote(s)),
            Val::Bytes(b) => {
                out.push('{');
                for (i, byte) in b.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&format!("\"{i}\":{byte}"));
                }
                out.push('}');
            }
            Val::Link(c) => {
                out.push_str("{\"/\":");
                out.push_str(&quote(&c.to_string()));
                out.push('}');
            }
            Val::List(l) => {
                out.push('[');
                for (i, item) in l.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_json(item, out);
                }
                out.push(']');
            }
            Val::Map(m) => {
                out.push('{');
                for (i, (k, item)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&quote(k));
                    out.push(':');
                    write_json(item, out);
                }
                out.push('}');
            }
        }
    }

    /// `String(value)`, i.e. what a template literal `${value}` prints (`None` is `undefined`).
    pub(super) fn string(v: Option<&Val>) -> String {
        match v {
            None => "undefined".into(),
            Some(v) => to_string(v),
        }
    }

    fn to_string(v: &Val) -> String {
        match v {
            Val::Null => "null".into(),
            Val::Bool(b) => b.to_string(),
            Val::Int(i) => i.to_string(),
            Val::Float(f) => number(*f),
            Val::Str(s) => s.clone(),
            Val::Bytes(b) => b.iter().map(u8::to_string).collect::<Vec<_>>().join(","),
            Val::Link(c) => c.to_string(),
            Val::List(l) => l
                .iter()
                .map(|item| match item {
                    Val::Null => String::new(),
                    other => to_string(other),
                })
                .collect::<Vec<_>>()
                .join(","),
            Val::Map(_) => "[object Object]".into(),
        }
    }

    /// ucanto schema's `toString(value)`, used in type errors.
    pub(super) fn describe(v: Option<&Val>) -> String {
        match v {
            None => "undefined".into(),
            Some(Val::Null) => "null".into(),
            Some(Val::Bool(b)) => b.to_string(),
            Some(Val::Str(s)) => quote(s),
            Some(Val::Int(i)) if is_bigint(*i) => format!("{i}n"),
            Some(Val::Int(i)) => i.to_string(),
            Some(Val::Float(f)) => number(*f),
            Some(Val::List(_)) => "array".into(),
            Some(Val::Link(_)) => "CID".into(),
            Some(Val::Bytes(_)) => "Uint8Array".into(),
            Some(Val::Map(_)) => "object".into(),
        }
    }

    /// `typeof value`.
    pub(super) fn type_of(v: Option<&Val>) -> &'static str {
        match v {
            None => "undefined",
            Some(Val::Bool(_)) => "boolean",
            Some(Val::Str(_)) => "string",
            Some(Val::Int(i)) if is_bigint(*i) => "bigint",
            Some(Val::Int(_) | Val::Float(_)) => "number",
            Some(_) => "object",
        }
    }

    pub(super) fn is_bigint(i: i128) -> bool {
        !(-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&i)
    }

    /// JS truthiness.
    pub(super) fn truthy(v: Option<&Val>) -> bool {
        match v {
            None | Some(Val::Null) | Some(Val::Bool(false)) => false,
            Some(Val::Int(0)) => false,
            Some(Val::Float(f)) => !(*f == 0.0 || f.is_nan()),
            Some(Val::Str(s)) => !s.is_empty(),
            Some(_) => true,
        }
    }

    #[derive(Debug)]
    enum Prim {
        Undefined,
        Null,
        Bool(bool),
        Num(f64),
        Str(String),
    }

    fn to_number_str(s: &str) -> f64 {
        let t = s.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
        if t.is_empty() {
            return 0.0;
        }
        let radix = |p: &str, r: u32| {
            u64::from_str_radix(p, r)
                .map(|n| n as f64)
                .unwrap_or(f64::NAN)
        };
        if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            return radix(h, 16);
        }
        if let Some(o) = t.strip_prefix("0o").or_else(|| t.strip_prefix("0O")) {
            return radix(o, 8);
        }
        if let Some(b) = t.strip_prefix("0b").or_else(|| t.strip_prefix("0B")) {
            return radix(b, 2);
        }
        match t {
            "Infinity" | "+Infinity" => return f64::INFINITY,
            "-Infinity" => return f64::NEG_INFINITY,
            _ => {}
        }
        let valid = t
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
        if valid {
            t.parse().unwrap_or(f64::NAN)
        } else {
            f64::NAN
        }
    }

    fn prim(v: Option<&Val>) -> Prim {
        match v {
            None => Prim::Undefined,
            Some(Val::Null) => Prim::Null,
            Some(Val::Bool(b)) => Prim::Bool(*b),
            Some(Val::Int(i)) => Prim::Num(*i as f64),
            Some(Val::Float(f)) => Prim::Num(*f),
            Some(Val::Str(s)) => Prim::Str(s.clone()),
            // ToPrimitive on an object: its toString().
            Some(other) => Prim::Str(to_string(other)),
        }
    }

    fn prim_eq(a: Prim, b: Prim) -> bool {
        use Prim::*;
        match (a, b) {
            (Undefined | Null, Undefined | Null) => true,
            (Undefined | Null, _) | (_, Undefined | Null) => false,
            (Num(x), Num(y)) => x == y,
            (Str(x), Str(y)) => x == y,
            (Bool(x), Bool(y)) => x == y,
            (Num(x), Str(y)) => x == to_number_str(&y),
            (Str(x), Num(y)) => to_number_str(&x) == y,
            (Bool(x), other) => prim_eq(Num(f64::from(u8::from(x))), other),
            (other, Bool(y)) => prim_eq(other, Num(f64::from(u8::from(y)))),
        }
    }

    /// JS `a == b` for decoded values: objects by identity, primitives with coercion.
    pub(super) fn loose_eq(a: Option<&Val>, b: Option<&Val>) -> bool {
        match (a, b) {
            (Some(x), Some(y)) if x.is_object() && y.is_object() => match (x, y) {
                (Val::Bytes(p), Val::Bytes(q)) => Arc::ptr_eq(p, q),
                (Val::Link(p), Val::Link(q)) => Arc::ptr_eq(p, q),
                (Val::List(p), Val::List(q)) => Arc::ptr_eq(p, q),
                (Val::Map(p), Val::Map(q)) => Arc::ptr_eq(p, q),
                _ => false,
            },
            _ => prim_eq(prim(a), prim(b)),
        }
    }

    /// `new Date(secs * 1000).toString()` on a host whose time zone is UTC.
    pub(super) fn date(secs: i64) -> String {
        const DAY: i64 = 86_400;
        if i128::from(secs).abs() * 1000 > 8_640_000_000_000_000 {
            return "Invalid Date".into();
        }
        let days = secs.div_euclid(DAY);
        let rem = secs.rem_euclid(DAY);
        let (y, m, d) = civil_from_days(days);
        let weekday = (days + 4).rem_euclid(7) as usize;
        const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let year = if y >= 0 {
            format!("{y:04}")
        } else {
            format!("-{:04}", -y)
        };
        format!(
            "{} {} {:02} {} {:02}:{:02}:{:02} GMT+0000 (Coordinated Universal Time)",
            WEEKDAYS[weekday],
            MONTHS[(m - 1) as usize],
            d,
            year,
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }

    /// Days since 1970-01-01 → (year, month 1..=12, day 1..=31), proleptic Gregorian.
    fn civil_from_days(z: i64) -> (i64, i64, i64) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d)
    }

    /// ucanto's `indent`.
    pub(super) fn indent(message: &str) -> String {
        format!("  {}", message.split('\n').collect::<Vec<_>>().join("\n  "))
    }

    /// ucanto's `li`: a bullet, indented, continuation lines indented too.
    pub(super) fn li(message: &str) -> String {
        indent(&format!("- {message}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Schemas: ucanto's `Schema` readers for `with` and `nb` fields, with their error messages.
// ---------------------------------------------------------------------------------------------

/// Constraints of a link schema (`Schema.link({code, version, multihash})`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkSchema {
    /// Required codec (e.g. `0x0202` for CAR links).
    pub code: Option<u64>,
    /// Required CID version.
    pub version: Option<u64>,
    /// Required multihash code.
    pub multihash_code: Option<u64>,
    /// Required multihash digest (an exact CID match together with the other fields).
    pub digest: Option<Vec<u8>>,
}

impl LinkSchema {
    /// A schema accepting exactly `cid` (what ucanto's `Schema.link(cid)` does).
    pub fn exactly(cid: &Cid) -> Self {
        Self {
            code: Some(cid.codec()),
            version: Some(cid.version() as u64),
            multihash_code: Some(cid.hash().code()),
            digest: Some(cid.hash().digest().to_vec()),
        }
    }
}

/// A ucanto schema: how a `with` or `nb` field is read and what the error says when it fails.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Schema {
    /// `Schema.unknown()`: anything, including absent.
    Unknown,
    /// `Schema.string()`.
    String,
    /// `Schema.integer()`.
    Integer,
    /// `Schema.number()`.
    Number,
    /// `Schema.boolean()`.
    Boolean,
    /// `Schema.bytes()`.
    Bytes,
    /// `Schema.link(…)` / `Link.match(…)`.
    Link(LinkSchema),
    /// `URI.match({protocol})`: a URI, normalised as JS `URL#href`, with that scheme (e.g.
    /// `"did:"`).
    Uri {
        /// Required scheme including the colon.
        protocol: Option<String>,
    },
    /// `DID.match({method})`: a string starting `did:<method>:`.
    Did {
        /// Required DID method (e.g. `"key"`).
        method: Option<String>,
    },
    /// `Schema.literal(string)`.
    Literal(String),
    /// `.optional()`.
    Optional(Box<Schema>),
    /// `.array()`.
    Array(Box<Schema>),
    /// `Schema.struct({...})`: fields read in this order, unknown fields dropped.
    Struct(Vec<(String, Schema)>),
    /// `Schema.union([...])` / `.or()`.
    Union(Vec<Schema>),
}

impl Schema {
    /// Any link.
    pub fn link() -> Self {
        Schema::Link(LinkSchema::default())
    }

    /// A CIDv1 link with this codec.
    pub fn link_with_codec(code: u64) -> Self {
        Schema::Link(LinkSchema {
            code: Some(code),
            version: Some(1),
            ..LinkSchema::default()
        })
    }

    /// `URI.match({protocol: 'did:'})`.
    pub fn did_uri() -> Self {
        Schema::Uri {
            protocol: Some("did:".into()),
        }
    }

    /// `DID.match({method})`.
    pub fn did(method: Option<&str>) -> Self {
        Schema::Did {
            method: method.map(str::to_string),
        }
    }

    /// This schema, or absent.
    pub fn optional(self) -> Self {
        match self {
            Schema::Optional(_) => self,
            other => Schema::Optional(Box::new(other)),
        }
    }

    /// An array of this schema.
    pub fn array(self) -> Self {
        Schema::Array(Box::new(self))
    }

    /// Reads a (JS) value; `Ok(None)` is `undefined` (an absent optional field).
    fn read(&self, input: Option<&Val>) -> Result<Option<Val>, String> {
        let type_error = |expect: &str| {
            format!(
                "Expected value of type {expect} instead got {}",
                js::describe(input)
            )
        };
        match self {
            Schema::Unknown => Ok(input.cloned()),
            Schema::String => match input {
                Some(v @ Val::Str(_)) => Ok(Some(v.clone())),
                _ => Err(type_error("string")),
            },
            Schema::Number => match input {
                Some(v @ Val::Float(_)) => Ok(Some(v.clone())),
                Some(v @ Val::Int(i)) if !js::is_bigint(*i) => Ok(Some(v.clone())),
                _ => Err(type_error("number")),
            },
            Schema::Integer => match input {
                Some(v @ Val::Int(i)) if !js::is_bigint(*i) => Ok(Some(v.clone())),
                Some(v @ Val::Float(f)) if f.is_finite() && f.fract() == 0.0 => Ok(Some(v.clone())),
                Some(Val::Float(_)) => Err(type_error("integer")),
                _ => Err(type_error("number")),
            },
            Schema::Boolean => match input {
                Some(v @ Val::Bool(_)) => Ok(Some(v.clone())),
                _ => Err(type_error("boolean")),
            },
            Schema::Bytes => match input {
                Some(v @ Val::Bytes(_)) => Ok(Some(v.clone())),
                _ => Err(type_error("Uint8Array")),
            },
            Schema::Link(spec) => read_link(spec, input).map(Some),
            Schema::Uri { protocol } => {
                read_uri(input, protocol.as_deref()).map(|s| Some(Val::Str(s)))
            }
            Schema::Did { method } => match input {
                Some(Val::Str(s)) => {
                    let prefix = match method {
                        Some(m) => format!("did:{m}:"),
                        None => "did:".to_string(),
                    };
                    if s.starts_with(&prefix) {
                        Ok(Some(Val::Str(s.clone())))
                    } else {
                        Err(format!("Expected a {prefix} but got \"{s}\" instead"))
                    }
                }
                _ => Err(type_error("string")),
            },
            Schema::Literal(expect) => match input {
                Some(Val::Str(s)) if s == expect => Ok(Some(Val::Str(s.clone()))),
                _ => Err(format!(
                    "Expected literal {} instead got {}",
                    js::quote(expect),
                    js::describe(input)
                )),
            },
            Schema::Optional(inner) => match inner.read(input) {
                Err(_) if input.is_none() => Ok(None),
                other => other,
            },
            Schema::Array(inner) => match input {
                Some(Val::List(items)) => {
                    let mut out = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        match inner.read(Some(item)) {
                            // An `undefined` element stays in the array; DAG-CBOR has none.
                            Ok(v) => out.push(v.unwrap_or(Val::Null)),
                            Err(cause) => {
                                return Err(format!(
                                    "Array contains invalid element at {i}:\n{}",
                                    js::li(&cause)
                                ));
                            }
                        }
                    }
                    Ok(Some(Val::List(Arc::new(out))))
                }
                _ => Err(type_error("array")),
            },
            Schema::Struct(fields) => match input {
                Some(v) if !matches!(v, Val::Null | Val::List(_)) && v.is_object() => {
                    read_struct(fields, &|name| v.get(name).cloned()).map(Some)
                }
                _ => Err(type_error("object")),
            },
            Schema::Union(variants) => {
                let mut causes = Vec::new();
                for variant in variants {
                    match variant.read(input) {
                        Ok(v) => return Ok(v),
                        Err(cause) => causes.push(cause),
                    }
                }
                let mut lines = vec!["Value does not match any type of the union:".to_string()];
                lines.extend(causes.iter().map(|c| js::li(c)));
                Err(lines.join("\n"))
            }
        }
    }
}

fn read_struct(
    fields: &[(String, Schema)],
    lookup: &dyn Fn(&str) -> Option<Val>,
) -> Result<Val, String> {
    let mut out = Vec::with_capacity(fields.len());
    for (name, schema) in fields {
        let value = lookup(name);
        match schema.read(value.as_ref()) {
            Ok(Some(v)) => out.push((name.clone(), v)),
            Ok(None) => {}
            Err(cause) => {
                return Err(format!(
                    "Object contains invalid field \"{name}\":\n{}",
                    js::li(&cause)
                ));
            }
        }
    }
    Ok(Val::Map(Arc::new(out)))
}

fn read_link(spec: &LinkSchema, input: Option<&Val>) -> Result<Val, String> {
    let cid = match input {
        None | Some(Val::Null) => {
            return Err(format!(
                "Expected link but got {} instead",
                js::string(input)
            ));
        }
        Some(Val::Link(cid)) => cid,
        Some(other) => {
            return Err(format!(
                "Expected link to be a CID instead of {}",
                js::string(Some(other))
            ));
        }
    };
    if let Some(code) = spec.code
        && cid.codec() != code
    {
        return Err(format!("Expected link to be CID with 0x{code:x} codec"));
    }
    if let Some(code) = spec.multihash_code
        && cid.hash().code() != code
    {
        return Err(format!(
            "Expected link to be CID with 0x{code:x} hashing algorithm"
        ));
    }
    if let Some(version) = spec.version
        && cid.version() as u64 != version
    {
        return Err(format!(
            "Expected link to be CID version {version} instead of {}",
            cid.version() as u64
        ));
    }
    if let Some(digest) = &spec.digest {
        let expect = base32(digest);
        let actual = base32(cid.hash().digest());
        if expect != actual {
            return Err(format!(
                "Expected link with \"{expect}\" hash digest instead of \"{actual}\""
            ));
        }
    }
    Ok(Val::Link(cid.clone()))
}

/// RFC 4648 base32, lower case, unpadded, no multibase prefix.
fn base32(bytes: &[u8]) -> String {
    let s = multibase::encode(multibase::Base::Base32Lower, bytes);
    s[1..].to_string()
}

fn read_uri(input: Option<&Val>, protocol: Option<&str>) -> Result<String, String> {
    let Some(Val::Str(s)) = input else {
        let got = match input {
            Some(Val::Null) => "null",
            other => js::type_of(other),
        };
        return Err(format!("Expected URI but got {got}"));
    };
    let Some(href) = url_href(s) else {
        return Err("Invalid URI".to_string());
    };
    if let Some(p) = protocol {
        let scheme_end = href.find(':').map_or(0, |i| i + 1);
        if &href[..scheme_end] != p {
            return Err(format!("Expected {p} URI instead got {href}"));
        }
    }
    Ok(href)
}

/// `new URL(input).href` for absolute URLs (see the module docs for what is approximated).
fn url_href(input: &str) -> Option<String> {
    let trimmed = input.trim_matches(|c: char| c <= ' ');
    let cleaned: String = trimmed
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect();
    let colon = cleaned.find(':')?;
    let scheme = &cleaned[..colon];
    let mut chars = scheme.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let rest = &cleaned[colon + 1..];
    let special = matches!(
        scheme.as_str(),
        "http" | "https" | "ws" | "wss" | "ftp" | "file"
    );
    if special || rest.starts_with('/') {
        return Some(format!("{scheme}:{rest}"));
    }
    let (before_fragment, fragment) = match rest.find('#') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (path, query) = match before_fragment.find('?') {
        Some(i) => (&before_fragment[..i], Some(&before_fragment[i + 1..])),
        None => (before_fragment, None),
    };
    let mut href = format!("{scheme}:");
    percent_encode(path, &mut href, |_| false);
    if let Some(q) = query {
        href.push('?');
        percent_encode(q, &mut href, |b| {
            matches!(b, b' ' | b'"' | b'#' | b'<' | b'>')
        });
    }
    if let Some(f) = fragment {
        href.push('#');
        percent_encode(f, &mut href, |b| {
            matches!(b, b' ' | b'"' | b'<' | b'>' | b'`')
        });
    }
    Some(href)
}

fn percent_encode(s: &str, out: &mut String, extra: impl Fn(u8) -> bool) {
    for c in s.chars() {
        let mut buf = [0u8; 4];
        let bytes = c.encode_utf8(&mut buf).as_bytes();
        if bytes.len() == 1 && bytes[0] > 0x1f && bytes[0] < 0x7f && !extra(bytes[0]) {
            out.push(c);
        } else {
            for b in bytes {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsed capabilities and derive rules.
// ---------------------------------------------------------------------------------------------

/// A capability read through a [`Descriptor`]: ability, resource and the `nb` fields its schema
/// declares (in schema order).
#[derive(Clone, Debug)]
pub struct ParsedCapability {
    can: String,
    with: String,
    nb: Vec<(String, Val)>,
}

impl ParsedCapability {
    /// The ability.
    pub fn can(&self) -> &str {
        &self.can
    }

    /// The resource (normalised as the schema reads it).
    pub fn with(&self) -> &str {
        &self.with
    }

    /// The caveats the schema declares, as an IPLD map.
    pub fn nb(&self) -> BTreeMap<String, Ipld> {
        self.nb
            .iter()
            .map(|(k, v)| (k.clone(), v.to_ipld()))
            .collect()
    }

    /// One caveat.
    pub fn nb_field(&self, name: &str) -> Option<Ipld> {
        self.field(name).map(Val::to_ipld)
    }

    fn field(&self, name: &str) -> Option<&Val> {
        self.nb.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The capability as it would be put in a UCAN.
    pub fn to_capability(&self) -> Capability {
        let cap = Capability::new(self.can.clone(), self.with.clone());
        if self.nb.is_empty() {
            cap
        } else {
            cap.with_nb(self.nb())
        }
    }
}

/// A custom derive rule: `Ok` when the claimed capability (first) may be derived from the
/// delegated one (second); `Err` carries the message ucanto's rule would fail with.
pub type DeriveFn =
    Arc<dyn Fn(&ParsedCapability, &ParsedCapability) -> Result<(), String> + Send + Sync>;

/// When a claimed capability may be derived from a delegated one of the same definition (or
/// from a `from` capability of a [`CapabilityParser::derive`]). Messages are those of the JS
/// rules; ucanto prefixes them with `Constraint violation: `.
#[derive(Clone)]
#[non_exhaustive]
pub enum Derives {
    /// ucanto's `defaultDerives`: `with` equal (or a trailing-`*` prefix match), every `nb`
    /// field of the delegated capability `==` the claimed one (JS loose equality: objects
    /// such as links only equal themselves).
    Default,
    /// `@storacha/capabilities` `equalWith`: `with` must be equal.
    EqualWith,
    /// `equalLink` (`store/get`, `store/remove`): `with` equal and `nb.link`, if delegated,
    /// equal as strings.
    EqualLink,
    /// `equalBlob` (`space/blob/add`): `with` equal, `nb.blob.digest` equal if delegated,
    /// `nb.blob.size` no larger than delegated.
    EqualBlob,
    /// The `store/list`/`space/blob/list` rule: `with` equal, with the
    /// `Expected 'with: "…"' instead got '…'` message.
    ExpectWith,
    /// `and(equalWith(…)) || and(equal(nb.f, …, f)) || …`: `with` equal, then each listed
    /// field equal as strings unless the delegated field is absent or `"*"` (`upload/add`:
    /// `root`, `shards`; `upload/remove`: `root`; `space/index/add`: `index`).
    EqualWithAndFields(Vec<String>),
    /// Any rule.
    Custom(DeriveFn),
}

impl fmt::Debug for Derives {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Derives::Default => f.write_str("Default"),
            Derives::EqualWith => f.write_str("EqualWith"),
            Derives::EqualLink => f.write_str("EqualLink"),
            Derives::EqualBlob => f.write_str("EqualBlob"),
            Derives::ExpectWith => f.write_str("ExpectWith"),
            Derives::EqualWithAndFields(fields) => {
                f.debug_tuple("EqualWithAndFields").field(fields).finish()
            }
            Derives::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl Derives {
    /// A rule from a closure.
    pub fn custom(
        rule: impl Fn(&ParsedCapability, &ParsedCapability) -> Result<(), String>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Derives::Custom(Arc::new(rule))
    }

    /// Applies the rule to (claimed, delegated).
    pub fn check(
        &self,
        claimed: &ParsedCapability,
        delegated: &ParsedCapability,
    ) -> Result<(), String> {
        let expect_with = || {
            if claimed.with == delegated.with {
                Ok(())
            } else {
                Err(format!(
                    "Expected 'with: \"{}\"' instead got '{}'",
                    delegated.with, claimed.with
                ))
            }
        };
        match self {
            Derives::Default => default_derives(claimed, delegated),
            Derives::EqualWith => equal_with(claimed, delegated),
            Derives::ExpectWith => expect_with(),
            Derives::EqualLink => {
                expect_with()?;
                let imposed = delegated.field("link");
                let own = claimed.field("link");
                if js::truthy(imposed) && js::string(imposed) != js::string(own) {
                    let own_text = if js::truthy(own) {
                        js::string(own)
                    } else {
                        String::new()
                    };
                    return Err(format!(
                        "Link {own_text} violates imposed {} constraint.",
                        js::string(imposed)
                    ));
                }
                Ok(())
            }
            Derives::EqualBlob => {
                expect_with()?;
                let sub = |c: &ParsedCapability, name: &str| {
                    c.field("blob").and_then(|b| b.get(name)).cloned()
                };
                let (imposed, own) = (sub(delegated, "digest"), sub(claimed, "digest"));
                let same = match (&imposed, &own) {
                    (Some(Val::Bytes(a)), Some(Val::Bytes(b))) => a == b,
                    _ => false,
                };
                if js::truthy(imposed.as_ref()) && !same {
                    let own_text = if js::truthy(own.as_ref()) {
                        js::string(own.as_ref())
                    } else {
                        String::new()
                    };
                    return Err(format!(
                        "Link {own_text} violates imposed {} constraint.",
                        js::string(imposed.as_ref())
                    ));
                }
                if let (Some(c), Some(d)) = (sub(claimed, "size"), sub(delegated, "size"))
                    && as_f64(&c) > as_f64(&d)
                {
                    return Err(format!(
                        "Size constraint violation: {} > {}",
                        js::string(Some(&c)),
                        js::string(Some(&d))
                    ));
                }
                Ok(())
            }
            Derives::EqualWithAndFields(fields) => {
                equal_with(claimed, delegated)?;
                for name in fields {
                    equal_field(claimed.field(name), delegated.field(name), name)?;
                }
                Ok(())
            }
            Derives::Custom(rule) => rule(claimed, delegated),
        }
    }
}

fn as_f64(v: &Val) -> f64 {
    match v {
        Val::Int(i) => *i as f64,
        Val::Float(f) => *f,
        _ => f64::NAN,
    }
}

/// `@storacha/capabilities` `equalWith`.
fn equal_with(claimed: &ParsedCapability, delegated: &ParsedCapability) -> Result<(), String> {
    if claimed.with == delegated.with {
        Ok(())
    } else {
        Err(format!(
            "Can not derive {} with {} from {}",
            claimed.can, claimed.with, delegated.with
        ))
    }
}

/// `@storacha/capabilities` `equal(child, parent, constraint)`.
fn equal_field(child: Option<&Val>, parent: Option<&Val>, constraint: &str) -> Result<(), String> {
    match parent {
        None => Ok(()),
        Some(Val::Str(s)) if s == "*" => Ok(()),
        Some(p) if js::string(child) == js::string(Some(p)) => Ok(()),
        Some(p) => Err(format!(
            "Constraint violation: {} violates imposed {constraint} constraint {}",
            js::string(child),
            js::string(Some(p))
        )),
    }
}

/// ucanto's `defaultDerives`.
fn default_derives(claimed: &ParsedCapability, delegated: &ParsedCapability) -> Result<(), String> {
    if let Some(prefix) = delegated.with.strip_suffix('*') {
        if !claimed.with.starts_with(prefix) {
            return Err(format!(
                "Resource {} does not match delegated {} ",
                claimed.with, delegated.with
            ));
        }
    } else if delegated.with != claimed.with {
        return Err(format!(
            "Resource {} is not contained by {}",
            claimed.with, delegated.with
        ));
    }
    for (name, value) in &delegated.nb {
        let own = claimed.field(name);
        if !js::loose_eq(own, Some(value)) {
            return Err(format!(
                "{name}: {} violates {}",
                js::string(own),
                js::string(Some(value))
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Capability definitions and parsers.
// ---------------------------------------------------------------------------------------------

/// One capability definition: ucanto's `capability({can, with, nb, derives})`.
#[derive(Clone, Debug)]
pub struct Descriptor {
    can: String,
    with: Schema,
    nb: Vec<(String, Schema)>,
    derives: Derives,
}

impl Descriptor {
    /// A definition of `can` on resources read by `with`, without `nb` fields, derived with
    /// ucanto's default rule.
    pub fn new(can: impl Into<String>, with: Schema) -> Self {
        Self {
            can: can.into(),
            with,
            nb: Vec::new(),
            derives: Derives::Default,
        }
    }

    /// Declares an `nb` field (fields are read in declaration order).
    pub fn nb(mut self, name: impl Into<String>, schema: Schema) -> Self {
        self.nb.push((name.into(), schema));
        self
    }

    /// Sets the derive rule.
    pub fn derives(mut self, derives: Derives) -> Self {
        self.derives = derives;
        self
    }

    /// The ability.
    pub fn can(&self) -> &str {
        &self.can
    }

    /// ucanto's `Capability#toString`.
    fn describe(&self) -> String {
        format!("{{\"can\":{}}}", js::quote(&self.can))
    }
}

#[derive(Debug)]
enum ParserKind {
    Capability(Arc<Descriptor>),
    Or(CapabilityParser, CapabilityParser),
    Derive {
        from: CapabilityParser,
        to: Arc<Descriptor>,
        derives: Derives,
    },
}

/// What an invocation's capability is checked against: a definition, alternatives (`or`), or
/// a definition also derivable from other capabilities (`derive`). Cheap to clone.
#[derive(Clone, Debug)]
pub struct CapabilityParser(Arc<ParserKind>);

impl From<Descriptor> for CapabilityParser {
    fn from(d: Descriptor) -> Self {
        CapabilityParser(Arc::new(ParserKind::Capability(Arc::new(d))))
    }
}

impl CapabilityParser {
    /// ucanto's `a.or(b)`: a capability matching either.
    pub fn or(self, other: impl Into<CapabilityParser>) -> Self {
        CapabilityParser(Arc::new(ParserKind::Or(self, other.into())))
    }

    /// ucanto's `from.derive({to, derives})`: `to`, which may also be derived from any
    /// capability this parser accepts, subject to `derives(claimed to, delegated from)`.
    pub fn derive(self, to: Descriptor, derives: Derives) -> Self {
        CapabilityParser(Arc::new(ParserKind::Derive {
            from: self,
            to: Arc::new(to),
            derives,
        }))
    }

    /// The ability this parser is for (`None` for an `or`).
    pub fn can(&self) -> Option<&str> {
        match &*self.0 {
            ParserKind::Capability(d) => Some(&d.can),
            ParserKind::Derive { to, .. } => Some(&to.can),
            ParserKind::Or(..) => None,
        }
    }
}

/// ucanto's `toString` of the parser, as used in `Claim … is not authorized`.
impl fmt::Display for CapabilityParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            ParserKind::Capability(d) => f.write_str(&d.describe()),
            ParserKind::Or(l, r) => write!(f, "{l}|{r}"),
            ParserKind::Derive { to, .. } => f.write_str(&to.describe()),
        }
    }
}

/// Capability definitions of the services we run or call, as their JS packages define them
/// (w3clock 0.4.1 `src/capabilities.js`, `@storacha/capabilities` 2.3.1).
pub mod parsers {
    use super::{CapabilityParser, Derives, Descriptor, Schema};
    use crate::ipld::CAR;

    fn space_did() -> Schema {
        Schema::did(Some("key"))
    }

    fn cursor_fields(d: Descriptor, pre: bool) -> Descriptor {
        let d = d
            .nb("cursor", Schema::String.optional())
            .nb("size", Schema::Integer.optional());
        if pre {
            d.nb("pre", Schema::Boolean.optional())
        } else {
            d
        }
    }

    /// w3clock `clock/*`.
    pub fn clock_any() -> CapabilityParser {
        Descriptor::new("clock/*", Schema::did_uri()).into()
    }

    /// w3clock `clock/head`.
    pub fn clock_head() -> CapabilityParser {
        Descriptor::new("clock/head", Schema::did_uri()).into()
    }

    /// w3clock `clock/advance` (`nb.event`: a CIDv1 link).
    pub fn clock_advance() -> CapabilityParser {
        Descriptor::new("clock/advance", Schema::did_uri())
            .nb(
                "event",
                Schema::Link(super::LinkSchema {
                    version: Some(1),
                    ..Default::default()
                }),
            )
            .into()
    }

    /// w3clock `clock/follow` (defined, not served by w3clock).
    pub fn clock_follow() -> CapabilityParser {
        Descriptor::new("clock/follow", Schema::did_uri())
            .nb("iss", Schema::did_uri().optional())
            .nb("with", Schema::did_uri().optional())
            .into()
    }

    /// w3clock `clock/unfollow` (defined, not served by w3clock).
    pub fn clock_unfollow() -> CapabilityParser {
        Descriptor::new("clock/unfollow", Schema::did_uri())
            .nb("iss", Schema::did_uri().optional())
            .nb("with", Schema::did_uri().optional())
            .into()
    }

    /// w3clock `clock/following` (defined, not served by w3clock).
    pub fn clock_following() -> CapabilityParser {
        Descriptor::new("clock/following", Schema::did_uri()).into()
    }

    /// Storacha `*` (top): every ability, `with` a DID or `ucan:*`.
    pub fn top() -> CapabilityParser {
        Descriptor::new(
            "*",
            Schema::Union(vec![Schema::did(None), Schema::Literal("ucan:*".into())]),
        )
        .derives(Derives::EqualWith)
        .into()
    }

    /// Storacha `space/*`.
    pub fn space_any() -> CapabilityParser {
        Descriptor::new("space/*", space_did())
            .derives(Derives::EqualWith)
            .into()
    }

    /// Storacha `space/info`, derivable from `store/list`, `store/remove`, `upload/add`,
    /// `upload/list` and `upload/remove` on the same space.
    pub fn space_info() -> CapabilityParser {
        store_list()
            .or(store_remove())
            .or(upload_add())
            .or(upload_list())
            .or(upload_remove())
            .derive(
                Descriptor::new("space/info", space_did()),
                Derives::EqualWith,
            )
    }

    /// Storacha `space/blob/*`.
    pub fn space_blob_any() -> CapabilityParser {
        Descriptor::new("space/blob/*", space_did())
            .derives(Derives::EqualWith)
            .into()
    }

    /// Storacha `space/blob/add` (`nb.blob: {digest: bytes, size: integer}`, `equalBlob`).
    pub fn space_blob_add() -> CapabilityParser {
        Descriptor::new("space/blob/add", space_did())
            .nb(
                "blob",
                Schema::Struct(vec![
                    ("digest".into(), Schema::Bytes),
                    ("size".into(), Schema::Integer),
                ]),
            )
            .derives(Derives::EqualBlob)
            .into()
    }

    /// Storacha `space/index/*`.
    pub fn space_index_any() -> CapabilityParser {
        Descriptor::new("space/index/*", space_did())
            .derives(Derives::EqualWith)
            .into()
    }

    /// Storacha `space/index/add` (`nb.index`: CAR link, `nb.content`: optional link).
    pub fn space_index_add() -> CapabilityParser {
        Descriptor::new("space/index/add", space_did())
            .nb("index", Schema::link_with_codec(CAR))
            .nb("content", Schema::link().optional())
            .derives(Derives::EqualWithAndFields(vec!["index".into()]))
            .into()
    }

    /// Storacha `upload/*`.
    pub fn upload_any() -> CapabilityParser {
        Descriptor::new("upload/*", space_did())
            .derives(Derives::EqualWith)
            .into()
    }

    /// Storacha `upload/add` (`nb.root`: link, `nb.shards`: optional CAR links).
    pub fn upload_add() -> CapabilityParser {
        Descriptor::new("upload/add", space_did())
            .nb("root", Schema::link())
            .nb("shards", Schema::link_with_codec(CAR).array().optional())
            .derives(Derives::EqualWithAndFields(vec![
                "root".into(),
                "shards".into(),
            ]))
            .into()
    }

    /// Storacha `upload/list` (default derive rule).
    pub fn upload_list() -> CapabilityParser {
        cursor_fields(Descriptor::new("upload/list", space_did()), true).into()
    }

    /// Storacha `upload/remove` (`nb.root`: link).
    pub fn upload_remove() -> CapabilityParser {
        Descriptor::new("upload/remove", space_did())
            .nb("root", Schema::link())
            .derives(Derives::EqualWithAndFields(vec!["root".into()]))
            .into()
    }

    /// Storacha `store/*`.
    pub fn store_any() -> CapabilityParser {
        Descriptor::new("store/*", space_did())
            .derives(Derives::EqualWith)
            .into()
    }

    /// Storacha `store/list`.
    pub fn store_list() -> CapabilityParser {
        cursor_fields(Descriptor::new("store/list", space_did()), true)
            .derives(Derives::ExpectWith)
            .into()
    }

    /// Storacha `store/remove` (`nb.link`: CAR link, `equalLink`).
    pub fn store_remove() -> CapabilityParser {
        Descriptor::new("store/remove", space_did())
            .nb("link", Schema::link_with_codec(CAR))
            .derives(Derives::EqualLink)
            .into()
    }
}

// ---------------------------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------------------------

/// The invocation is addressed to someone else (`provide`'s audience check).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invocation audience is {actual}, expected {expected}")]
pub struct InvalidAudience {
    /// The service DID.
    pub expected: String,
    /// The invocation's `aud`.
    pub actual: String,
}

impl Failure for InvalidAudience {
    fn name(&self) -> &'static str {
        "InvalidAudience"
    }
    fn message(&self) -> String {
        format!(
            "Expected literal {} instead got {}",
            js::quote(&self.expected),
            js::quote(&self.actual)
        )
    }
}

/// The invocation does not carry exactly one capability (`@ucanto/server`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invocation has {} capabilities, expected exactly one", capabilities.len())]
pub struct InvocationCapabilityError {
    /// The invocation's capabilities.
    pub capabilities: Vec<Capability>,
}

impl Failure for InvocationCapabilityError {
    fn name(&self) -> &'static str {
        "InvocationCapabilityError"
    }
    fn message(&self) -> String {
        "Invocation is required to have a single capability.".into()
    }
    fn to_wire(&self) -> Ipld {
        let caps = self
            .capabilities
            .iter()
            .map(|c| Ipld::Map(c.to_ipld()))
            .collect();
        wire(
            self.name(),
            self.message(),
            vec![
                ("error", Ipld::Bool(true)),
                ("capabilities", Ipld::List(caps)),
            ],
        )
    }
}

/// No handler for the invoked ability (`@ucanto/server`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("no handler for {}", capability.can)]
pub struct HandlerNotFound {
    /// The invoked capability.
    pub capability: Capability,
}

impl Failure for HandlerNotFound {
    fn name(&self) -> &'static str {
        "HandlerNotFound"
    }
    fn message(&self) -> String {
        format!(
            "service does not implement {{can: \"{}\"}} handler",
            self.capability.can
        )
    }
    fn to_wire(&self) -> Ipld {
        let mut cap = BTreeMap::new();
        cap.insert("can".to_string(), Ipld::String(self.capability.can.clone()));
        cap.insert(
            "with".to_string(),
            Ipld::String(self.capability.with.clone()),
        );
        wire(
            self.name(),
            self.message(),
            vec![("error", Ipld::Bool(true)), ("capability", Ipld::Map(cap))],
        )
    }
}

/// A delegation whose `exp` has passed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("delegation {delegation} expired at {expired_at}")]
pub struct Expired {
    /// The delegation.
    pub delegation: Cid,
    /// Its `exp` (Unix seconds).
    pub expired_at: i64,
}

impl Failure for Expired {
    fn name(&self) -> &'static str {
        "Expired"
    }
    fn message(&self) -> String {
        format!(
            "Proof {} has expired on {}",
            self.delegation,
            js::date(self.expired_at)
        )
    }
    fn to_wire(&self) -> Ipld {
        wire(
            self.name(),
            self.message(),
            vec![("expiredAt", Ipld::Integer(self.expired_at.into()))],
        )
    }
}

/// A delegation whose `nbf` is not yet reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("delegation {delegation} is not valid before {valid_at}")]
pub struct NotValidBefore {
    /// The delegation.
    pub delegation: Cid,
    /// Its `nbf` (Unix seconds).
    pub valid_at: i64,
}

impl Failure for NotValidBefore {
    fn name(&self) -> &'static str {
        "NotValidBefore"
    }
    fn message(&self) -> String {
        format!(
            "Proof {} is not valid before {}",
            self.delegation,
            js::date(self.valid_at)
        )
    }
    fn to_wire(&self) -> Ipld {
        wire(
            self.name(),
            self.message(),
            vec![("validAt", Ipld::Integer(self.valid_at.into()))],
        )
    }
}

/// A delegation whose signature does not verify with the key expected for its issuer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("delegation {delegation} by {issuer} has no valid signature from {key}")]
pub struct InvalidSignature {
    /// The delegation.
    pub delegation: Cid,
    /// Its issuer.
    pub issuer: String,
    /// The `did:key` it was checked against.
    pub key: String,
}

impl Failure for InvalidSignature {
    fn name(&self) -> &'static str {
        "InvalidSignature"
    }
    fn message(&self) -> String {
        if self.issuer.starts_with("did:key") {
            format!(
                "Proof {} does not has a valid signature from {}",
                self.delegation, self.key
            )
        } else {
            format!(
                "Proof {} issued by {} does not has a valid signature from {}\n  ℹ️ Probably issuer signed with a different key, which got rotated, invalidating delegations that were issued with prior keys",
                self.delegation, self.issuer, self.key
            )
        }
    }
}

/// A proof named by CID whose block is not available.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("proof {link} is not available{}", cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
pub struct UnavailableProof {
    /// The proof's CID.
    pub link: Cid,
    /// Why it could not be resolved, when there is more to say than "absent".
    pub cause: Option<String>,
}

impl Failure for UnavailableProof {
    fn name(&self) -> &'static str {
        "UnavailableProof"
    }
    fn message(&self) -> String {
        let mut m = format!(
            "Linked proof '{}' is not included and could not be resolved",
            self.link
        );
        if let Some(cause) = &self.cause {
            m.push('\n');
            m.push_str(&js::li(&format!("Proof resolution failed with: {cause}")));
        }
        m
    }
}

/// A proof delegated to someone other than the issuer citing it (ucanto's
/// `PrincipalAlignmentError`, named `InvalidAudience` on the wire).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("proof {delegation} is delegated to {delegation_audience}, not to {audience}")]
pub struct PrincipalAlignmentError {
    /// The proof.
    pub delegation: Cid,
    /// The proof's audience.
    pub delegation_audience: String,
    /// The issuer that cited it (the audience it should have had).
    pub audience: String,
}

impl Failure for PrincipalAlignmentError {
    fn name(&self) -> &'static str {
        "InvalidAudience"
    }
    fn message(&self) -> String {
        format!(
            "Delegation audience is '{}' instead of '{}'",
            self.delegation_audience, self.audience
        )
    }
    fn to_wire(&self) -> Ipld {
        let mut delegation = BTreeMap::new();
        delegation.insert(
            "audience".to_string(),
            Ipld::String(self.delegation_audience.clone()),
        );
        wire(
            self.name(),
            self.message(),
            vec![
                ("audience", Ipld::String(self.audience.clone())),
                ("delegation", Ipld::Map(delegation)),
            ],
        )
    }
}

/// A delegation of the chain has been revoked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("delegation {delegation} has been revoked")]
pub struct Revoked {
    /// The revoked delegation.
    pub delegation: Cid,
}

impl Failure for Revoked {
    fn name(&self) -> &'static str {
        "Revoked"
    }
    fn message(&self) -> String {
        format!("Proof {} has been revoked", self.delegation)
    }
}

/// No key could be found for a non-`did:key` issuer (no attestation, no resolver).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot resolve a key for {did}")]
pub struct DidKeyResolutionError {
    /// The issuer.
    pub did: String,
}

impl Failure for DidKeyResolutionError {
    fn name(&self) -> &'static str {
        "DIDKeyResolutionError"
    }
    fn message(&self) -> String {
        format!("Unable to resolve '{}' key", self.did)
    }
}

/// A non-`did:key` issuer's attestations exist but none authorizes the delegation.
#[derive(Debug, Clone, thiserror::Error)]
#[error("delegation {delegation} by {issuer} has an invalid session")]
pub struct SessionEscalation {
    /// The delegation.
    pub delegation: Cid,
    /// Its issuer.
    pub issuer: String,
    /// Why no attestation authorized it.
    pub cause: Box<Unauthorized>,
}

impl Failure for SessionEscalation {
    fn name(&self) -> &'static str {
        "SessionEscalation"
    }
    fn message(&self) -> String {
        format!(
            "Delegation {} issued by {} has an invalid session\n{}",
            self.delegation,
            self.issuer,
            js::li(&self.cause.message())
        )
    }
}

/// Why a proof could not be used (ucanto's `ProofError`, wrapping the cause).
#[derive(Debug, Clone, thiserror::Error)]
#[error("proof {proof}: {cause}")]
pub struct ProofError {
    /// The proof.
    pub proof: Cid,
    /// Why it is unusable.
    pub cause: Box<InvalidProof>,
}

impl Failure for ProofError {
    fn name(&self) -> &'static str {
        "ProofError"
    }
    fn message(&self) -> String {
        format!(
            "Capability can not be derived from prf:{} because:\n{}",
            self.proof,
            js::li(&self.cause.message())
        )
    }
}

/// Why a delegation (or the authorization as a whole) is not acceptable: ucanto's
/// `invalidProofs` entries.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidProof {
    /// `Expired`.
    #[error(transparent)]
    Expired(Expired),
    /// `NotValidBefore`.
    #[error(transparent)]
    NotValidBefore(NotValidBefore),
    /// `InvalidSignature`.
    #[error(transparent)]
    InvalidSignature(InvalidSignature),
    /// `UnavailableProof`.
    #[error(transparent)]
    UnavailableProof(UnavailableProof),
    /// `PrincipalAlignmentError` (wire name `InvalidAudience`).
    #[error(transparent)]
    PrincipalAlignment(PrincipalAlignmentError),
    /// `Revoked`.
    #[error(transparent)]
    Revoked(Revoked),
    /// `DIDKeyResolutionError`.
    #[error(transparent)]
    DidKeyResolution(DidKeyResolutionError),
    /// `SessionEscalation`.
    #[error(transparent)]
    SessionEscalation(SessionEscalation),
    /// `ProofError`.
    #[error(transparent)]
    ProofError(ProofError),
}

impl Failure for InvalidProof {
    fn name(&self) -> &'static str {
        match self {
            InvalidProof::Expired(e) => e.name(),
            InvalidProof::NotValidBefore(e) => e.name(),
            InvalidProof::InvalidSignature(e) => e.name(),
            InvalidProof::UnavailableProof(e) => e.name(),
            InvalidProof::PrincipalAlignment(e) => e.name(),
            InvalidProof::Revoked(e) => e.name(),
            InvalidProof::DidKeyResolution(e) => e.name(),
            InvalidProof::SessionEscalation(e) => e.name(),
            InvalidProof::ProofError(e) => e.name(),
        }
    }
    fn message(&self) -> String {
        match self {
            InvalidProof::Expired(e) => e.message(),
            InvalidProof::NotValidBefore(e) => e.message(),
            InvalidProof::InvalidSignature(e) => e.message(),
            InvalidProof::UnavailableProof(e) => e.message(),
            InvalidProof::PrincipalAlignment(e) => e.message(),
            InvalidProof::Revoked(e) => e.message(),
            InvalidProof::DidKeyResolution(e) => e.message(),
            InvalidProof::SessionEscalation(e) => e.message(),
            InvalidProof::ProofError(e) => e.message(),
        }
    }
    fn to_wire(&self) -> Ipld {
        match self {
            InvalidProof::Expired(e) => e.to_wire(),
            InvalidProof::NotValidBefore(e) => e.to_wire(),
            InvalidProof::InvalidSignature(e) => e.to_wire(),
            InvalidProof::UnavailableProof(e) => e.to_wire(),
            InvalidProof::PrincipalAlignment(e) => e.to_wire(),
            InvalidProof::Revoked(e) => e.to_wire(),
            InvalidProof::DidKeyResolution(e) => e.to_wire(),
            InvalidProof::SessionEscalation(e) => e.to_wire(),
            InvalidProof::ProofError(e) => e.to_wire(),
        }
    }
}

/// A capability whose `with` or `nb` does not fit the definition.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("malformed {} capability: {cause}", capability.can)]
pub struct MalformedCapability {
    /// The capability as it appears in the UCAN.
    pub capability: Capability,
    /// The schema error.
    pub cause: String,
}

impl Failure for MalformedCapability {
    fn name(&self) -> &'static str {
        "MalformedCapability"
    }
    fn message(&self) -> String {
        format!(
            "Encountered malformed '{}' capability: {}\n{}",
            self.capability.can,
            js::json(&capability_val(&self.capability)),
            js::li(&self.cause)
        )
    }
}

/// A delegated capability that the claimed one would widen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("capability escalates its proof: {cause}")]
pub struct EscalatedCapability {
    /// The derive rule's message.
    pub cause: String,
}

impl Failure for EscalatedCapability {
    fn name(&self) -> &'static str {
        "EscalatedCapability"
    }
    fn message(&self) -> String {
        format!("Constraint violation: {}", self.cause)
    }
}

/// One reason a capability could not be derived from a delegated one.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MatchError {
    /// `MalformedCapability`.
    #[error(transparent)]
    Malformed(MalformedCapability),
    /// `EscalatedCapability`.
    #[error(transparent)]
    Escalated(EscalatedCapability),
    /// A nested `DelegationError`.
    #[error(transparent)]
    Delegation(Box<DelegationError>),
}

impl MatchError {
    fn message(&self) -> String {
        match self {
            MatchError::Malformed(e) => e.message(),
            MatchError::Escalated(e) => e.message(),
            MatchError::Delegation(e) => e.message(),
        }
    }
}

/// A capability that could not be derived from the delegated capabilities (ucanto's
/// `DelegationError`, named `InvalidClaim` on the wire).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot derive {context} from delegated capabilities")]
pub struct DelegationError {
    /// What was being derived, as ucanto prints it (sometimes literally `[object Object]`).
    pub context: String,
    /// Why.
    pub causes: Vec<MatchError>,
}

impl Failure for DelegationError {
    fn name(&self) -> &'static str {
        "InvalidClaim"
    }
    fn message(&self) -> String {
        let mut lines = vec![format!(
            "Can not derive {} from delegated capabilities:",
            self.context
        )];
        lines.extend(self.causes.iter().map(|c| js::li(&c.message())));
        lines.join("\n")
    }
}

fn explored_lines(
    failed: &[InvalidClaim],
    delegation_errors: &[DelegationError],
    invalid: &[InvalidProof],
) -> Vec<String> {
    failed
        .iter()
        .map(|e| js::li(&e.message()))
        .chain(delegation_errors.iter().map(|e| js::li(&e.message())))
        .chain(invalid.iter().map(|e| js::li(&e.message())))
        .collect()
}

fn unknown_lines(unknown: &[Capability]) -> Option<String> {
    if unknown.is_empty() {
        return None;
    }
    let items: Vec<String> = unknown
        .iter()
        .map(|c| js::li(&js::json(&capability_val(c))))
        .collect();
    Some(js::li(&format!(
        "Encountered unknown capabilities\n{}",
        items.join("\n")
    )))
}

/// A matched capability that no proof chain authorizes (ucanto's `InvalidClaim`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("capability {capability} is not authorized")]
pub struct InvalidClaim {
    /// The capability, as ucanto prints the match.
    pub capability: String,
    /// The issuer of the delegation it was found in.
    pub issuer: String,
    /// Delegated capabilities it could not be derived from.
    pub delegation_errors: Vec<DelegationError>,
    /// Delegated capabilities of unrelated abilities.
    pub unknown_capabilities: Vec<Capability>,
    /// Proofs that could not be used.
    pub invalid_proofs: Vec<InvalidProof>,
    /// Matches that could not be authorized further up.
    pub failed_proofs: Vec<InvalidClaim>,
}

impl Failure for InvalidClaim {
    fn name(&self) -> &'static str {
        "InvalidClaim"
    }
    fn message(&self) -> String {
        let mut lines = vec![
            format!("Capability {} is not authorized because:", self.capability),
            js::li(&format!(
                "Capability can not be (self) issued by '{}'",
                self.issuer
            )),
        ];
        let errors = explored_lines(
            &self.failed_proofs,
            &self.delegation_errors,
            &self.invalid_proofs,
        );
        if errors.is_empty() {
            lines.push(js::li("Delegated capability not found"));
        } else {
            lines.extend(errors);
        }
        lines.extend(unknown_lines(&self.unknown_capabilities));
        lines.join("\n")
    }
}

/// The claimed capability is not authorized: every explored path, and why it failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("claim {capability} is not authorized")]
pub struct Unauthorized {
    /// The claimed capability, as ucanto prints its parser (e.g. `{"can":"clock/head"}`).
    pub capability: String,
    /// Capabilities that matched the ability but could not be read or derived.
    pub delegation_errors: Vec<DelegationError>,
    /// Capabilities of other abilities.
    pub unknown_capabilities: Vec<Capability>,
    /// Delegations that are invalid (expired, bad signature, revoked, …).
    pub invalid_proofs: Vec<InvalidProof>,
    /// Matches that no proof chain authorizes.
    pub failed_proofs: Vec<InvalidClaim>,
}

impl Failure for Unauthorized {
    fn name(&self) -> &'static str {
        "Unauthorized"
    }
    fn message(&self) -> String {
        let mut lines = vec![format!("Claim {} is not authorized", self.capability)];
        let errors = explored_lines(
            &self.failed_proofs,
            &self.delegation_errors,
            &self.invalid_proofs,
        );
        if errors.is_empty() {
            lines.push(js::li("No matching delegated capability found"));
        } else {
            lines.extend(errors);
        }
        lines.extend(unknown_lines(&self.unknown_capabilities));
        lines.join("\n")
    }
}

/// Why a service refuses an invocation before running its handler.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// Not exactly one capability.
    #[error(transparent)]
    InvocationCapability(InvocationCapabilityError),
    /// The service has no handler for the ability.
    #[error(transparent)]
    HandlerNotFound(HandlerNotFound),
    /// Addressed to another audience.
    #[error(transparent)]
    InvalidAudience(InvalidAudience),
    /// No valid proof chain.
    #[error(transparent)]
    Unauthorized(Box<Unauthorized>),
}

impl Failure for ValidationError {
    fn name(&self) -> &'static str {
        match self {
            ValidationError::InvocationCapability(e) => e.name(),
            ValidationError::HandlerNotFound(e) => e.name(),
            ValidationError::InvalidAudience(e) => e.name(),
            ValidationError::Unauthorized(e) => e.name(),
        }
    }
    fn message(&self) -> String {
        match self {
            ValidationError::InvocationCapability(e) => e.message(),
            ValidationError::HandlerNotFound(e) => e.message(),
            ValidationError::InvalidAudience(e) => e.message(),
            ValidationError::Unauthorized(e) => e.message(),
        }
    }
    fn to_wire(&self) -> Ipld {
        match self {
            ValidationError::InvocationCapability(e) => e.to_wire(),
            ValidationError::HandlerNotFound(e) => e.to_wire(),
            ValidationError::InvalidAudience(e) => e.to_wire(),
            ValidationError::Unauthorized(e) => e.to_wire(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Authorization and revocation.
// ---------------------------------------------------------------------------------------------

/// A successful check: the capability as matched, the delegation it came from, and the
/// authorization of that delegation's matching proof (empty when self-issued).
#[derive(Clone, Debug)]
pub struct Authorization {
    capability: ParsedCapability,
    delegation: Delegation,
    proofs: Vec<Authorization>,
}

impl Authorization {
    /// The capability as matched at this level (for the root: the invoked capability).
    pub fn capability(&self) -> &ParsedCapability {
        &self.capability
    }

    /// The delegation the capability was found in (for the root: the invocation).
    pub fn delegation(&self) -> &Delegation {
        &self.delegation
    }

    /// The delegation's issuer.
    pub fn issuer(&self) -> &str {
        self.delegation.ucan().issuer()
    }

    /// The delegation's audience.
    pub fn audience(&self) -> &str {
        self.delegation.ucan().audience()
    }

    /// The authorizations of the proofs this level relied on.
    pub fn proofs(&self) -> &[Authorization] {
        &self.proofs
    }

    /// The CIDs of every delegation of the chain, from the invocation towards the root
    /// (ucanto's `Authorization.iterate`).
    pub fn delegations(&self) -> Vec<Cid> {
        let mut out = vec![*self.delegation.cid()];
        for p in &self.proofs {
            out.extend(p.delegations());
        }
        out
    }

    /// For each delegation of the chain, the principals entitled to revoke it: its own issuer
    /// and audience and those of every delegation upstream (the Storacha upload service's
    /// `toRevocationQuery`). In [`Self::delegations`] order.
    pub fn revocation_scopes(&self) -> Vec<(Cid, Vec<String>)> {
        let mut out = Vec::new();
        self.collect_scopes(&mut out);
        out
    }

    fn collect_scopes(&self, out: &mut Vec<(Cid, Vec<String>)>) -> Vec<String> {
        let mut scope = vec![self.issuer().to_string(), self.audience().to_string()];
        let at = out.len();
        out.push((*self.delegation.cid(), Vec::new()));
        for p in &self.proofs {
            for principal in p.collect_scopes(out) {
                if !scope.contains(&principal) {
                    scope.push(principal);
                }
            }
        }
        out[at].1 = scope.clone();
        scope
    }
}

/// ucanto's `validateAuthorization` hook: is a delegation of an authorization revoked?
///
/// The validator is pure and synchronous; a service backed by a store should fetch the
/// revocations of every UCAN block in the request first (they are all known before
/// validation) and answer from that.
pub trait RevocationCheck {
    /// Whether `delegation` has been revoked by one of `revokers` (the principals entitled to
    /// revoke it in this chain).
    fn is_revoked(&self, delegation: &Cid, revokers: &[String]) -> bool;
}

/// No revocations (w3clock).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRevocations;

impl RevocationCheck for NoRevocations {
    fn is_revoked(&self, _: &Cid, _: &[String]) -> bool {
        false
    }
}

impl<F: Fn(&Cid, &[String]) -> bool> RevocationCheck for F {
    fn is_revoked(&self, delegation: &Cid, revokers: &[String]) -> bool {
        self(delegation, revokers)
    }
}

// ---------------------------------------------------------------------------------------------
// Signature caching across calls.
// ---------------------------------------------------------------------------------------------

/// What a signature check is remembered by: a SHA-256 digest of the UCAN's CID, the DID the
/// verifier speaks for and the `did:key` of its key (each field length-prefixed), so entries for
/// different UCANs, different DIDs or different keys never meet.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SignatureKey([u8; 32]);

impl fmt::Debug for SignatureKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignatureKey(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

impl SignatureKey {
    /// The key of `ucan`'s signature as checked by `verifier`.
    pub fn new(ucan: &Cid, verifier: &Verifier) -> Self {
        Self::of(ucan, verifier.did(), verifier.key_did())
    }

    /// From the verifier's DID and its key's `did:key` (which names the key).
    fn of(ucan: &Cid, did: &str, key_did: &str) -> Self {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(b"proto/validator/signature/v1\0");
        let mh = ucan.hash();
        for n in [ucan.version().into(), ucan.codec(), mh.code()] {
            h.update(u64::to_le_bytes(n));
        }
        for part in [mh.digest(), did.as_bytes(), key_did.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        Self(h.finalize().into())
    }

    /// The digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Successful signature checks remembered across [`Validator::access`] calls (see the module
/// documentation, "Signature caching", for why this is sound and what is not cached).
/// Implementations must be bounded: every proof a client sends with a valid signature is
/// offered to [`Self::insert`].
pub trait SignatureCache: Send + Sync {
    /// True when `key` was recorded by [`Self::insert`] (and is still held).
    fn contains(&self, key: &SignatureKey) -> bool;

    /// Records that the signature `key` names was verified and is valid.
    fn insert(&self, key: SignatureKey);
}

/// A [`SignatureCache`] of at most `max_entries` keys in two generations (like hashlru): keys
/// go to the young set; when it holds half the entries it becomes the old set and the previous
/// old set is dropped; a key found in the old set moves back to the young one. So a chain in
/// steady use stays, and one not seen for `max_entries / 2` insertions goes. Thread-safe (one
/// mutex; each operation is a couple of set lookups on 32-byte keys).
#[derive(Debug)]
pub struct BoundedSignatureCache {
    sets: Mutex<Generations>,
    half: usize,
}

#[derive(Debug, Default)]
struct Generations {
    young: HashSet<SignatureKey>,
    old: HashSet<SignatureKey>,
}

impl Generations {
    fn insert(&mut self, key: SignatureKey, half: usize) {
        if self.young.contains(&key) {
            return;
        }
        if self.young.len() >= half {
            self.old = std::mem::take(&mut self.young);
        }
        self.old.remove(&key);
        self.young.insert(key);
    }
}

impl BoundedSignatureCache {
    /// A good size for a service: 65 536 keys, about 4 MiB when full.
    pub const DEFAULT_ENTRIES: usize = 65_536;

    /// A cache holding at most `max_entries` keys (rounded down to even; below 2 it holds none).
    pub fn new(max_entries: usize) -> Self {
        Self {
            sets: Mutex::default(),
            half: max_entries / 2,
        }
    }

    /// How many keys are held now.
    pub fn len(&self) -> usize {
        let g = self.lock();
        g.young.len() + g.old.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // Every operation leaves both sets consistent, so a lock poisoned by a panic elsewhere
        // is still usable.
        self.sets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for BoundedSignatureCache {
    fn default() -> Self {
        Self::new(Self::DEFAULT_ENTRIES)
    }
}

impl SignatureCache for BoundedSignatureCache {
    fn contains(&self, key: &SignatureKey) -> bool {
        let mut g = self.lock();
        if g.young.contains(key) {
            return true;
        }
        if g.old.remove(key) {
            g.insert(*key, self.half);
            return true;
        }
        false
    }

    fn insert(&self, key: SignatureKey) {
        if self.half > 0 {
            self.lock().insert(key, self.half);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Service-level checks.
// ---------------------------------------------------------------------------------------------

/// The signature check the validator makes of `invocation` itself, as a [`SignatureKey`] for
/// [`Validator::check_with`] and a [`SignatureCheck`] to verify (alone or in a batch with
/// [`crate::principal::verify_batch`]). `None` when the issuer is not an Ed25519 `did:key` (an
/// authority, a `did:mailto` account, another key type): the validator judges those itself.
pub fn invocation_signature(invocation: &Delegation) -> Option<(SignatureKey, SignatureCheck)> {
    let issuer = invocation.ucan().issuer();
    if !issuer.starts_with("did:key:") {
        return None;
    }
    let check = invocation.ucan().self_signature_check()?;
    Some((SignatureKey::of(invocation.cid(), issuer, issuer), check))
}

/// The invocation's only capability, or [`InvocationCapabilityError`].
pub fn single_capability(
    invocation: &Delegation,
) -> Result<&Capability, InvocationCapabilityError> {
    match invocation.ucan().capabilities() {
        [one] => Ok(one),
        caps => Err(InvocationCapabilityError {
            capabilities: caps.to_vec(),
        }),
    }
}

/// Checks that the invocation is addressed to `service_did` (string equality, as ucanto's
/// `Schema.literal(id.did())`).
pub fn check_audience(invocation: &Delegation, service_did: &str) -> Result<(), InvalidAudience> {
    let actual = invocation.ucan().audience();
    if actual == service_did {
        Ok(())
    } else {
        Err(InvalidAudience {
            expected: service_did.to_string(),
            actual: actual.to_string(),
        })
    }
}

/// The authorization rules of one service: its authority (its own identity, possibly a
/// `did:web` backed by a key), extra trusted attestation authorities, local proofs, limits and
/// the revocation hook. Cheap to clone.
#[derive(Clone)]
pub struct Validator {
    authority: Verifier,
    trusted: Vec<Verifier>,
    local_proofs: Vec<Delegation>,
    max_depth: usize,
    max_validations: usize,
    revocations: Arc<dyn RevocationCheck + Send + Sync>,
    signatures: Option<Arc<dyn SignatureCache>>,
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validator")
            .field("authority", &self.authority)
            .field("trusted", &self.trusted)
            .field("local_proofs", &self.local_proofs.len())
            .field("max_depth", &self.max_depth)
            .field("max_validations", &self.max_validations)
            .field("signature_cache", &self.signatures.is_some())
            .finish_non_exhaustive()
    }
}

impl Validator {
    /// A validator whose authority is the service's own identity (`Verifier::parse(key)` or
    /// `.with_did("did:web:…")`).
    pub fn new(authority: Verifier) -> Self {
        Self {
            authority,
            trusted: Vec::new(),
            local_proofs: Vec::new(),
            max_depth: DEFAULT_MAX_DEPTH,
            max_validations: DEFAULT_MAX_VALIDATIONS,
            revocations: Arc::new(NoRevocations),
            signatures: None,
        }
    }

    /// Also accepts chains attested by (or rooted at) `authority`, tried before the service's
    /// own identity, as w3clock's `authorities` option (e.g. `did:web:up.storacha.network`
    /// with its key, so `did:mailto` accounts logged in with Storacha are accepted).
    pub fn with_trusted_authority(mut self, authority: Verifier) -> Self {
        self.trusted.push(authority);
        self
    }

    /// Delegations the service holds (ucanto's `proofs` option): `ucan/attest` delegations
    /// from the authority let their audiences issue attestations too.
    pub fn with_local_proofs(mut self, proofs: Vec<Delegation>) -> Self {
        self.local_proofs = proofs;
        self
    }

    /// Sets the revocation hook.
    pub fn with_revocations(
        mut self,
        revocations: impl RevocationCheck + Send + Sync + 'static,
    ) -> Self {
        self.revocations = Arc::new(revocations);
        self
    }

    /// Remembers successful signature checks of proofs in `cache` across calls (see the module
    /// documentation, "Signature caching"). Clones of the validator share it.
    pub fn with_signature_cache(mut self, cache: Arc<dyn SignatureCache>) -> Self {
        self.signatures = Some(cache);
        self
    }

    /// Sets the maximum proof depth (the invocation's own proofs are depth 1).
    pub fn with_max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth;
        self
    }

    /// Sets how many delegations one check may validate before giving up on further proofs.
    pub fn with_max_validations(mut self, n: usize) -> Self {
        self.max_validations = n;
        self
    }

    /// The service's authority.
    pub fn authority(&self) -> &Verifier {
        &self.authority
    }

    /// ucanto's `access`: is `invocation`'s capability authorized, as `capability` defines it,
    /// at `now` (Unix seconds)? Does not check the audience (see [`check_audience`]).
    pub fn access(
        &self,
        invocation: &Delegation,
        capability: &CapabilityParser,
        now: i64,
    ) -> Result<Authorization, Box<Unauthorized>> {
        self.access_checked(invocation, capability, now, &[])
    }

    /// [`Self::access`], with signature verdicts already reached for this call (see
    /// [`invocation_signature`]).
    fn access_checked(
        &self,
        invocation: &Delegation,
        capability: &CapabilityParser,
        now: i64,
        verdicts: &[(SignatureKey, bool)],
    ) -> Result<Authorization, Box<Unauthorized>> {
        let cache = RefCell::new(verdicts.iter().copied().collect::<HashMap<_, _>>());
        for authority in &self.trusted {
            if let Ok(auth) = self.access_with(authority, invocation, capability, now, &cache) {
                return Ok(auth);
            }
        }
        self.access_with(&self.authority, invocation, capability, now, &cache)
            .map_err(Box::new)
    }

    fn access_with(
        &self,
        authority: &Verifier,
        invocation: &Delegation,
        capability: &CapabilityParser,
        now: i64,
        cache: &RefCell<HashMap<SignatureKey, bool>>,
    ) -> Result<Authorization, Unauthorized> {
        let engine = Engine {
            authority,
            now,
            max_depth: self.max_depth,
            revocations: &*self.revocations,
            local_proofs: &self.local_proofs,
            nodes: RefCell::new(Vec::new()),
            sig_cache: cache,
            shared_sigs: self.signatures.as_deref(),
            budget: Cell::new(self.max_validations),
        };
        let root = engine.add_node(invocation.clone(), 0);
        engine.claim(capability, &[ProofSlot::Present(root)])
    }

    /// Everything ucanto's server and `provide` check before running a handler, in their
    /// order: one capability, a handler for it (`route` returns the parser for an ability, or
    /// `None`), the audience, then [`Self::access`].
    pub fn check(
        &self,
        invocation: &Delegation,
        service_did: &str,
        now: i64,
        route: impl FnOnce(&str) -> Option<CapabilityParser>,
    ) -> Result<Authorization, ValidationError> {
        self.check_with(invocation, service_did, now, route, &[])
    }

    /// [`Self::check`], taking signature verdicts already reached for this invocation, as
    /// [`invocation_signature`] prepares them: each `(key, valid)` answers that signature check
    /// in place of verifying it again.
    pub fn check_with(
        &self,
        invocation: &Delegation,
        service_did: &str,
        now: i64,
        route: impl FnOnce(&str) -> Option<CapabilityParser>,
        verdicts: &[(SignatureKey, bool)],
    ) -> Result<Authorization, ValidationError> {
        let cap = single_capability(invocation).map_err(ValidationError::InvocationCapability)?;
        let parser = route(&cap.can).ok_or_else(|| {
            ValidationError::HandlerNotFound(HandlerNotFound {
                capability: cap.clone(),
            })
        })?;
        check_audience(invocation, service_did).map_err(ValidationError::InvalidAudience)?;
        self.access_checked(invocation, &parser, now, verdicts)
            .map_err(ValidationError::Unauthorized)
    }
}

// ---------------------------------------------------------------------------------------------
// The search.
// ---------------------------------------------------------------------------------------------

type NodeId = usize;

/// A delegation as a JS object: each proof cited by a given delegation object is one node,
/// created once (ucanto caches `delegation.proofs`), so identity matches JS identity.
struct Node {
    delegation: Delegation,
    depth: usize,
    proofs: Option<Rc<Vec<ProofSlot>>>,
}

#[derive(Clone, Debug)]
enum ProofSlot {
    Present(NodeId),
    Missing { link: Cid, cause: Option<String> },
}

/// One capability of one delegation node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Source {
    node: NodeId,
    index: usize,
}

#[derive(Clone, Debug)]
struct DirectMatch {
    source: Source,
    value: ParsedCapability,
    descriptor: Arc<Descriptor>,
}

#[derive(Clone, Debug)]
enum Match {
    Direct(DirectMatch),
    Derived {
        selected: DirectMatch,
        from: CapabilityParser,
        derives: Derives,
    },
}

impl Match {
    fn selected(&self) -> &DirectMatch {
        match self {
            Match::Direct(d) | Match::Derived { selected: d, .. } => d,
        }
    }

    fn value(&self) -> &ParsedCapability {
        &self.selected().value
    }

    fn source(&self) -> Source {
        self.selected().source
    }
}

#[derive(Default)]
struct Selection {
    matches: Vec<Match>,
    errors: Vec<DelegationError>,
    unknown: Vec<Source>,
}

enum MatchFailure {
    Unknown(Source),
    Malformed(MalformedCapability),
}

struct Engine<'a> {
    authority: &'a Verifier,
    now: i64,
    max_depth: usize,
    revocations: &'a (dyn RevocationCheck + Send + Sync),
    local_proofs: &'a [Delegation],
    nodes: RefCell<Vec<Node>>,
    /// This call's signature checks, failures too.
    sig_cache: &'a RefCell<HashMap<SignatureKey, bool>>,
    /// Successful signature checks of proofs, across calls.
    shared_sigs: Option<&'a dyn SignatureCache>,
    budget: Cell<usize>,
}

/// ucanto's `resolveAbility`: does the delegated ability `pattern` cover `can`?
fn ability_covers(pattern: &str, can: &str) -> bool {
    pattern == can
        || pattern == "*"
        || pattern
            .strip_suffix('*')
            .is_some_and(|prefix| prefix.ends_with('/') && can.starts_with(prefix))
}

// The error types are what the search produces on every failed path and are moved a few
// times at most; boxing them would only add allocations.
#[allow(clippy::result_large_err)]
impl Engine<'_> {
    fn add_node(&self, delegation: Delegation, depth: usize) -> NodeId {
        let mut nodes = self.nodes.borrow_mut();
        nodes.push(Node {
            delegation,
            depth,
            proofs: None,
        });
        nodes.len() - 1
    }

    fn delegation(&self, node: NodeId) -> Delegation {
        self.nodes.borrow()[node].delegation.clone()
    }

    fn capability(&self, s: Source) -> Capability {
        self.nodes.borrow()[s.node].delegation.ucan().capabilities()[s.index].clone()
    }

    fn issuer(&self, node: NodeId) -> String {
        self.nodes.borrow()[node]
            .delegation
            .ucan()
            .issuer()
            .to_string()
    }

    fn sources_of(&self, node: NodeId) -> Vec<Source> {
        let n = self.nodes.borrow()[node]
            .delegation
            .ucan()
            .capabilities()
            .len();
        (0..n).map(|index| Source { node, index }).collect()
    }

    /// The proofs of a node, resolved once.
    fn proofs_of(&self, node: NodeId) -> Rc<Vec<ProofSlot>> {
        if let Some(p) = &self.nodes.borrow()[node].proofs {
            return p.clone();
        }
        let (delegation, depth) = {
            let nodes = self.nodes.borrow();
            (nodes[node].delegation.clone(), nodes[node].depth)
        };
        let slots: Vec<ProofSlot> = if depth >= self.max_depth {
            delegation
                .ucan()
                .proofs()
                .iter()
                .map(|cid| ProofSlot::Missing {
                    link: *cid,
                    cause: Some(format!(
                        "proof chain exceeds the maximum depth of {}",
                        self.max_depth
                    )),
                })
                .collect()
        } else {
            delegation
                .proofs()
                .into_iter()
                .map(|p| match p {
                    Proof::Delegation(d) => ProofSlot::Present(self.add_node(d, depth + 1)),
                    Proof::Unavailable(link) => ProofSlot::Missing { link, cause: None },
                    Proof::Malformed { cid, reason } => ProofSlot::Missing {
                        link: cid,
                        cause: Some(reason),
                    },
                })
                .collect()
        };
        let slots = Rc::new(slots);
        self.nodes.borrow_mut()[node].proofs = Some(slots.clone());
        slots
    }

    // ----- capability matching -----

    fn parse_capability(
        &self,
        d: &Arc<Descriptor>,
        s: Source,
    ) -> Result<ParsedCapability, MatchFailure> {
        let cap = self.capability(s);
        if cap.can != d.can {
            return Err(MatchFailure::Unknown(s));
        }
        let malformed = |cause: String| {
            MatchFailure::Malformed(MalformedCapability {
                capability: cap.clone(),
                cause,
            })
        };
        let with = read_with(&d.with, &cap.with).map_err(malformed)?;
        let raw_nb = cap
            .nb
            .as_ref()
            .map(|nb| Val::from_ipld(&Ipld::Map(nb.clone())));
        let nb = read_struct(&d.nb, &|name| {
            raw_nb.as_ref().and_then(|m| m.get(name).cloned())
        })
        .map_err(malformed)?;
        Ok(ParsedCapability {
            can: d.can.clone(),
            with,
            nb: struct_entries(nb),
        })
    }

    /// ucanto's `resolveCapability`: the delegated capability at `s` as a pattern for
    /// `claimed`.
    fn resolve_capability(
        &self,
        d: &Arc<Descriptor>,
        claimed: &ParsedCapability,
        s: Source,
    ) -> Result<ParsedCapability, MatchFailure> {
        let cap = self.capability(s);
        if !ability_covers(&cap.can, &claimed.can) {
            return Err(MatchFailure::Unknown(s));
        }
        let malformed = |cause: String| {
            MatchFailure::Malformed(MalformedCapability {
                capability: cap.clone(),
                cause,
            })
        };
        let resource = if cap.with == claimed.with || cap.with == "ucan:*" {
            claimed.with.clone()
        } else {
            cap.with.clone()
        };
        let with = read_with(&d.with, &resource).map_err(malformed)?;
        let raw_nb = cap
            .nb
            .as_ref()
            .map(|nb| Val::from_ipld(&Ipld::Map(nb.clone())));
        let nb = read_struct(
            &d.nb,
            &|name| match raw_nb.as_ref().and_then(|m| m.get(name)) {
                Some(own) => Some(own.clone()),
                None => claimed.field(name).cloned(),
            },
        )
        .map_err(malformed)?;
        Ok(ParsedCapability {
            can: claimed.can.clone(),
            with,
            nb: struct_entries(nb),
        })
    }

    fn parser_match(&self, p: &CapabilityParser, s: Source) -> Result<Match, MatchFailure> {
        match &*p.0 {
            ParserKind::Capability(d) => self.parse_capability(d, s).map(|value| {
                Match::Direct(DirectMatch {
                    source: s,
                    value,
                    descriptor: d.clone(),
                })
            }),
            ParserKind::Or(left, right) => match self.parser_match(left, s) {
                Ok(m) => Ok(m),
                Err(left_error) => match self.parser_match(right, s) {
                    Ok(m) => Ok(m),
                    Err(right_error @ MatchFailure::Malformed(_)) => Err(right_error),
                    Err(_) => Err(left_error),
                },
            },
            ParserKind::Derive { from, to, derives } => {
                let value = self.parse_capability(to, s)?;
                Ok(Match::Derived {
                    selected: DirectMatch {
                        source: s,
                        value,
                        descriptor: to.clone(),
                    },
                    from: from.clone(),
                    derives: derives.clone(),
                })
            }
        }
    }

    /// ucanto's `select(matcher, sources)`.
    fn parser_select(&self, p: &CapabilityParser, sources: &[Source]) -> Selection {
        let mut sel = Selection::default();
        for &s in sources {
            match self.parser_match(p, s) {
                Ok(m) => sel.matches.push(m),
                Err(MatchFailure::Unknown(s)) => sel.unknown.push(s),
                Err(MatchFailure::Malformed(e)) => sel.errors.push(DelegationError {
                    // ucanto passes the raw capability object as context: `${object}`.
                    context: "[object Object]".into(),
                    causes: vec![MatchError::Malformed(e)],
                }),
            }
        }
        sel
    }

    fn match_to_string(&self, m: &DirectMatch) -> String {
        let mut map = vec![
            ("can".to_string(), Val::Str(m.descriptor.can.clone())),
            ("with".to_string(), Val::Str(m.value.with.clone())),
        ];
        if !m.value.nb.is_empty() {
            map.push(("nb".to_string(), Val::Map(Arc::new(m.value.nb.clone()))));
        }
        js::json(&Val::Map(Arc::new(map)))
    }

    fn direct_select(&self, m: &DirectMatch, sources: &[Source]) -> Selection {
        let mut sel = Selection::default();
        for &s in sources {
            match self.resolve_capability(&m.descriptor, &m.value, s) {
                Ok(delegated) => match m.descriptor.derives.check(&m.value, &delegated) {
                    Ok(()) => sel.matches.push(Match::Direct(DirectMatch {
                        source: s,
                        value: delegated,
                        descriptor: m.descriptor.clone(),
                    })),
                    Err(cause) => sel.errors.push(DelegationError {
                        context: self.match_to_string(m),
                        causes: vec![MatchError::Escalated(EscalatedCapability { cause })],
                    }),
                },
                Err(MatchFailure::Unknown(s)) => sel.unknown.push(s),
                Err(MatchFailure::Malformed(e)) => sel.errors.push(DelegationError {
                    context: self.match_to_string(m),
                    causes: vec![MatchError::Malformed(e)],
                }),
            }
        }
        sel
    }

    fn match_select(&self, m: &Match, sources: &[Source]) -> Selection {
        match m {
            Match::Direct(d) => self.direct_select(d, sources),
            Match::Derived {
                selected,
                from,
                derives,
            } => {
                let context = self.match_to_string(selected);
                let direct = self.direct_select(selected, sources);
                let derived = self.parser_select(from, sources);
                let mut errors = Vec::new();
                let mut from_matches = Vec::new();
                for candidate in derived.matches {
                    match derives.check(&selected.value, candidate.value()) {
                        Ok(()) => from_matches.push(candidate),
                        Err(cause) => errors.push(DelegationError {
                            context: context.clone(),
                            causes: vec![MatchError::Escalated(EscalatedCapability { cause })],
                        }),
                    }
                }
                errors.extend(direct.errors);
                errors.extend(derived.errors.into_iter().map(|e| DelegationError {
                    context: context.clone(),
                    causes: vec![MatchError::Delegation(Box::new(e))],
                }));
                let mut matches: Vec<Match> = direct
                    .matches
                    .into_iter()
                    .map(|dm| Match::Derived {
                        selected: dm.selected().clone(),
                        from: from.clone(),
                        derives: derives.clone(),
                    })
                    .collect();
                matches.extend(from_matches);
                Selection {
                    matches,
                    errors,
                    unknown: intersection(&direct.unknown, &derived.unknown),
                }
            }
        }
    }

    /// ucanto's `prune`: `None` when the match is self-issued (its `with` is its delegation's
    /// issuer).
    fn prune(&self, m: &Match) -> Option<Match> {
        let s = m.selected();
        if s.value.with == self.issuer(s.source.node) {
            None
        } else {
            Some(m.clone())
        }
    }

    fn authorization(&self, m: &Match, proofs: Vec<Authorization>) -> Authorization {
        Authorization {
            capability: m.value().clone(),
            delegation: self.delegation(m.source().node),
            proofs,
        }
    }

    // ----- claims -----

    /// ucanto's `claim`: find a valid path for `parser` among `proofs`.
    fn claim(
        &self,
        parser: &CapabilityParser,
        proofs: &[ProofSlot],
    ) -> Result<Authorization, Unauthorized> {
        let mut invalid_proofs = Vec::new();
        let mut present = Vec::new();
        for slot in proofs {
            match slot {
                ProofSlot::Present(n) => present.push(*n),
                ProofSlot::Missing { link, cause } => {
                    invalid_proofs.push(InvalidProof::UnavailableProof(UnavailableProof {
                        link: *link,
                        cause: cause.clone(),
                    }))
                }
            }
        }
        let mut sources = Vec::new();
        for &node in &present {
            match self.validate(node, &present) {
                Ok(()) => sources.extend(self.sources_of(node)),
                Err(e) => invalid_proofs.push(e),
            }
        }
        let selection = self.parser_select(parser, &sources);
        let mut failed_proofs = Vec::new();
        for m in &selection.matches {
            let auth = match self.prune(m) {
                None => self.authorization(m, Vec::new()),
                Some(selector) => match self.authorize(&selector) {
                    Ok(a) => self.authorization(m, vec![a]),
                    Err(e) => {
                        failed_proofs.push(e);
                        continue;
                    }
                },
            };
            match self.validate_authorization(&auth) {
                Ok(()) => return Ok(auth),
                Err(e) => invalid_proofs.push(e),
            }
        }
        Err(Unauthorized {
            capability: parser.to_string(),
            delegation_errors: selection.errors,
            unknown_capabilities: selection
                .unknown
                .iter()
                .map(|s| self.capability(*s))
                .collect(),
            invalid_proofs,
            failed_proofs,
        })
    }

    /// ucanto's `authorize`: find a valid path for a match from its delegation's proofs.
    fn authorize(&self, m: &Match) -> Result<Authorization, InvalidClaim> {
        let (sources, invalid_proofs) = self.resolve_sources(m.source().node);
        let selection = self.match_select(m, &sources);
        let mut failed_proofs = Vec::new();
        for candidate in &selection.matches {
            match self.prune(candidate) {
                None => return Ok(self.authorization(candidate, Vec::new())),
                Some(selector) => match self.authorize(&selector) {
                    Ok(a) => return Ok(self.authorization(candidate, vec![a])),
                    Err(e) => failed_proofs.push(e),
                },
            }
        }
        Err(InvalidClaim {
            capability: self.match_to_string(m.selected()),
            issuer: self.issuer(m.source().node),
            delegation_errors: selection.errors,
            unknown_capabilities: selection
                .unknown
                .iter()
                .map(|s| self.capability(*s))
                .collect(),
            invalid_proofs,
            failed_proofs,
        })
    }

    /// ucanto's `resolveSources`: the capabilities of a delegation's usable proofs, and why the
    /// others are unusable.
    fn resolve_sources(&self, node: NodeId) -> (Vec<Source>, Vec<InvalidProof>) {
        let mut errors = Vec::new();
        let mut present = Vec::new();
        for slot in self.proofs_of(node).iter() {
            match slot {
                ProofSlot::Present(n) => present.push(*n),
                ProofSlot::Missing { link, cause } => {
                    errors.push(InvalidProof::ProofError(ProofError {
                        proof: *link,
                        cause: Box::new(InvalidProof::UnavailableProof(UnavailableProof {
                            link: *link,
                            cause: cause.clone(),
                        })),
                    }))
                }
            }
        }
        let issuer = self.issuer(node);
        let mut aligned = Vec::new();
        for p in present {
            let d = self.delegation(p);
            if d.ucan().audience() != issuer {
                errors.push(InvalidProof::ProofError(ProofError {
                    proof: *d.cid(),
                    cause: Box::new(InvalidProof::PrincipalAlignment(PrincipalAlignmentError {
                        delegation: *d.cid(),
                        delegation_audience: d.ucan().audience().to_string(),
                        audience: issuer.clone(),
                    })),
                }));
            } else {
                aligned.push(p);
            }
        }
        let mut sources = Vec::new();
        for &p in &aligned {
            match self.validate(p, &aligned) {
                Ok(()) => sources.extend(self.sources_of(p)),
                Err(e) => errors.push(InvalidProof::ProofError(ProofError {
                    proof: *self.delegation(p).cid(),
                    cause: Box::new(e),
                })),
            }
        }
        (sources, errors)
    }

    // ----- per-delegation validity -----

    /// ucanto's `validate`: time bounds, then who signed.
    fn validate(&self, node: NodeId, siblings: &[NodeId]) -> Result<(), InvalidProof> {
        let d = self.delegation(node);
        let ucan = d.ucan();
        let remaining = self.budget.get();
        if remaining == 0 {
            return Err(InvalidProof::UnavailableProof(UnavailableProof {
                link: *d.cid(),
                cause: Some("validation budget exhausted".into()),
            }));
        }
        self.budget.set(remaining - 1);
        if let Some(exp) = ucan.expiration()
            && exp <= self.now
        {
            return Err(InvalidProof::Expired(Expired {
                delegation: *d.cid(),
                expired_at: exp,
            }));
        }
        if let Some(nbf) = ucan.not_before()
            && self.now <= nbf
        {
            return Err(InvalidProof::NotValidBefore(NotValidBefore {
                delegation: *d.cid(),
                valid_at: nbf,
            }));
        }
        self.verify_authorization(node, &d, siblings)
    }

    /// ucanto's `verifyAuthorization`.
    fn verify_authorization(
        &self,
        node: NodeId,
        d: &Delegation,
        siblings: &[NodeId],
    ) -> Result<(), InvalidProof> {
        let issuer = d.ucan().issuer();
        if issuer.starts_with("did:key:") {
            // The issuer's own key, which its did:key names: the verifier is only built (its
            // curve point decompressed) when the signature is not known yet.
            return self.verify_signature(node, d, issuer, issuer, || d.ucan().issuer_key().ok());
        }
        if issuer == self.authority.did() {
            return self.verify_signature(
                node,
                d,
                self.authority.did(),
                self.authority.key_did(),
                || Some(self.authority),
            );
        }
        match self.verify_session(node, d, siblings) {
            Ok(_) => Ok(()),
            Err(cause) if !cause.failed_proofs.is_empty() => {
                Err(InvalidProof::SessionEscalation(SessionEscalation {
                    delegation: *d.cid(),
                    issuer: issuer.to_string(),
                    cause: Box::new(cause),
                }))
            }
            Err(_) => Err(InvalidProof::DidKeyResolution(DidKeyResolutionError {
                did: issuer.to_string(),
            })),
        }
    }

    /// Is `d` signed by the key `key_did` names, speaking for `did`? `verifier` builds that
    /// verifier (`None`: the key is unusable, so the signature is invalid). Answered from this
    /// call's checks, then (for proofs) from the shared cache, else verified.
    fn verify_signature<V: std::borrow::Borrow<Verifier>>(
        &self,
        node: NodeId,
        d: &Delegation,
        did: &str,
        key_did: &str,
        verifier: impl FnOnce() -> Option<V>,
    ) -> Result<(), InvalidProof> {
        let key = SignatureKey::of(d.cid(), did, key_did);
        let cached = self.sig_cache.borrow().get(&key).copied();
        let valid = cached.unwrap_or_else(|| {
            // The invocation itself (depth 0) is new with every request: never shared.
            let shared = self
                .shared_sigs
                .filter(|_| self.nodes.borrow()[node].depth > 0);
            let ok = shared.is_some_and(|c| c.contains(&key))
                || verifier().is_some_and(|v| {
                    let v = v.borrow();
                    let ok = d.ucan().issuer() == v.did() && d.ucan().verify_signature(v);
                    if ok && let Some(c) = shared {
                        c.insert(key);
                    }
                    ok
                });
            self.sig_cache.borrow_mut().insert(key, ok);
            ok
        });
        if valid {
            Ok(())
        } else {
            Err(InvalidProof::InvalidSignature(InvalidSignature {
                delegation: *d.cid(),
                issuer: d.ucan().issuer().to_string(),
                key: key_did.to_string(),
            }))
        }
    }

    /// ucanto's `verifySession`: a `ucan/attest` of this delegation by the authority (or a
    /// principal it delegated `ucan/attest` to), among the sibling proofs.
    fn verify_session(
        &self,
        node: NodeId,
        d: &Delegation,
        siblings: &[NodeId],
    ) -> Result<Authorization, Unauthorized> {
        let authority = self.authority.did();
        let mut withs = vec![Schema::Literal(authority.to_string())];
        for p in self.local_proofs {
            if let Some(first) = p.ucan().capabilities().first()
                && first.can == UCAN_ATTEST
                && first.with == authority
            {
                withs.push(Schema::Literal(p.ucan().audience().to_string()));
            }
        }
        let with = if withs.len() == 1 {
            withs.remove(0)
        } else {
            Schema::Union(withs)
        };
        let attestation: CapabilityParser = Descriptor::new(UCAN_ATTEST, with)
            .nb("proof", Schema::Link(LinkSchema::exactly(d.cid())))
            .into();
        let candidates: Vec<ProofSlot> = siblings
            .iter()
            .copied()
            .filter(|&s| {
                let sd = self.delegation(s);
                sd.ucan()
                    .capabilities()
                    .first()
                    .is_some_and(|c| c.can == UCAN_ATTEST)
                    && sd.cid() != d.cid()
                    && s != node
            })
            .map(ProofSlot::Present)
            .collect();
        self.claim(&attestation, &candidates)
    }

    /// ucanto's `validateAuthorization` hook: revocations.
    fn validate_authorization(&self, auth: &Authorization) -> Result<(), InvalidProof> {
        for (cid, revokers) in auth.revocation_scopes() {
            if self.revocations.is_revoked(&cid, &revokers) {
                return Err(InvalidProof::Revoked(Revoked { delegation: cid }));
            }
        }
        Ok(())
    }
}

fn read_with(schema: &Schema, with: &str) -> Result<String, String> {
    match schema.read(Some(&Val::Str(with.to_string())))? {
        Some(Val::Str(s)) => Ok(s),
        // A `with` schema that reads a string into something else (none of ours does).
        Some(other) => Ok(js::string(Some(&other))),
        None => Ok(String::new()),
    }
}

fn struct_entries(v: Val) -> Vec<(String, Val)> {
    match v {
        Val::Map(m) => Arc::try_unwrap(m).unwrap_or_else(|m| (*m).clone()),
        _ => Vec::new(),
    }
}

/// ucanto's `intersection` of two lists of capability objects (by identity), in the order of
/// the shorter one (the right one when equal).
fn intersection(left: &[Source], right: &[Source]) -> Vec<Source> {
    let (result, other) = if left.len() < right.len() {
        (left, right)
    } else {
        (right, left)
    };
    let mut out: Vec<Source> = Vec::new();
    for s in result {
        if other.contains(s) && !out.contains(s) {
            out.push(*s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Val {
        Val::Str(v.into())
    }

    #[test]
    fn js_number_formatting() {
        for (f, want) in [
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e21, "1e+21"),
            (123456789012345680000.0, "123456789012345680000"),
            (1e-7, "1e-7"),
            (0.000001, "0.000001"),
            (1.5e-10, "1.5e-10"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
        ] {
            assert_eq!(js::number(f), want, "{f}");
        }
    }

    #[test]
    fn js_dates_in_utc() {
        assert_eq!(
            js::date(1_000_000_000),
            "Sun Sep 09 2001 01:46:40 GMT+0000 (Coordinated Universal Time)"
        );
        assert_eq!(
            js::date(1_990_000_000),
            "Sat Jan 22 2033 09:46:40 GMT+0000 (Coordinated Universal Time)"
        );
        assert_eq!(
            js::date(0),
            "Thu Jan 01 1970 00:00:00 GMT+0000 (Coordinated Universal Time)"
        );
        assert_eq!(
            js::date(-1),
            "Wed Dec 31 1969 23:59:59 GMT+0000 (Coordinated Universal Time)"
        );
        assert_eq!(
            js::date(951_782_400),
            "Tue Feb 29 2000 00:00:00 GMT+0000 (Coordinated Universal Time)"
        );
        assert_eq!(js::date(i64::MAX / 1000), "Invalid Date");
    }

    #[test]
    fn url_href_matches_whatwg_for_opaque_urls() {
        // Outputs checked with Node 20's `new URL(x).href`.
        assert_eq!(url_href("DID:key:abc def").unwrap(), "did:key:abc def");
        assert_eq!(
            url_href(" did:x:é?a b#c d ").unwrap(),
            "did:x:%C3%A9?a%20b#c%20d"
        );
        assert_eq!(url_href("did:key:z6Mk\tabc").unwrap(), "did:key:z6Mkabc");
        assert!(url_href("not a uri").is_none());
        assert!(url_href("1did:x").is_none());
        assert_eq!(
            read_uri(Some(&s("ucan:*")), Some("did:")).unwrap_err(),
            "Expected did: URI instead got ucan:*"
        );
        assert_eq!(
            read_uri(Some(&Val::Int(1)), None).unwrap_err(),
            "Expected URI but got number"
        );
    }

    #[test]
    fn js_loose_equality() {
        let link = Val::Link(Arc::new(Cid::default()));
        assert!(
            js::loose_eq(Some(&link), Some(&link.clone())),
            "same object"
        );
        assert!(!js::loose_eq(
            Some(&link),
            Some(&Val::Link(Arc::new(Cid::default())))
        ));
        assert!(js::loose_eq(Some(&Val::Int(1)), Some(&s("1"))));
        assert!(js::loose_eq(Some(&Val::Bool(true)), Some(&Val::Int(1))));
        assert!(js::loose_eq(None, Some(&Val::Null)));
        assert!(!js::loose_eq(None, Some(&Val::Int(0))));
        assert!(js::loose_eq(Some(&Val::Float(2.0)), Some(&Val::Int(2))));
        assert!(js::loose_eq(
            Some(&Val::List(Arc::new(vec![Val::Int(1), Val::Int(2)]))),
            Some(&s("1,2"))
        ));
        assert!(js::loose_eq(Some(&s("")), Some(&Val::Int(0))));
        assert!(!js::loose_eq(Some(&s("x")), Some(&Val::Int(0))));
    }

    #[test]
    fn js_stringification() {
        let bytes = Val::Bytes(Arc::new(vec![1, 2, 255]));
        assert_eq!(js::json(&bytes), r#"{"0":1,"1":2,"2":255}"#);
        assert_eq!(js::string(Some(&bytes)), "1,2,255");
        assert_eq!(js::describe(Some(&bytes)), "Uint8Array");
        assert_eq!(
            js::describe(Some(&Val::Int(1 << 60))),
            "1152921504606846976n"
        );
        assert_eq!(js::quote("a\"b\\c\n\u{1}é"), r#""a\"b\\c\n\u0001é""#);
        let raw = Ipld::Map(
            [("with", "w"), ("can", "c"), ("nb", "n")]
                .iter()
                .map(|(k, v)| (k.to_string(), Ipld::String(v.to_string())))
                .collect(),
        );
        assert_eq!(
            js::json(&Val::from_ipld(&raw)),
            r#"{"nb":"n","can":"c","with":"w"}"#,
            "decoded maps keep DAG-CBOR key order"
        );
        assert_eq!(js::li("a\nb"), "  - a\n  b");
    }

    #[test]
    fn schema_messages() {
        let link = Schema::Link(LinkSchema {
            code: Some(0x0202),
            version: Some(1),
            ..Default::default()
        });
        assert_eq!(
            link.read(None).unwrap_err(),
            "Expected link but got undefined instead"
        );
        assert_eq!(
            link.read(Some(&Val::Link(Arc::new(
                Cid::try_from("bafyreidzctn3gmlkpkfhjhxwhirod4plx2ctthsa4o5kimzz3in2bzu5yq")
                    .unwrap()
            ))))
            .unwrap_err(),
            "Expected link to be CID with 0x202 codec"
        );
        assert_eq!(
            Schema::Integer.read(Some(&Val::Float(1.5))).unwrap_err(),
            "Expected value of type integer instead got 1.5"
        );
        assert_eq!(
            Schema::Integer.read(Some(&s("1"))).unwrap_err(),
            "Expected value of type number instead got \"1\""
        );
        assert!(Schema::Integer.read(Some(&Val::Float(3.0))).is_ok());
        assert_eq!(
            Schema::did(Some("key"))
                .read(Some(&s("did:web:x")))
                .unwrap_err(),
            "Expected a did:key: but got \"did:web:x\" instead"
        );
        assert_eq!(
            Schema::Union(vec![Schema::did(None), Schema::Literal("ucan:*".into())])
                .read(Some(&s("x")))
                .unwrap_err(),
            "Value does not match any type of the union:\n  - Expected a did: but got \"x\" instead\n  - Expected literal \"ucan:*\" instead got \"x\""
        );
        assert_eq!(
            Schema::link()
                .array()
                .read(Some(&Val::List(Arc::new(vec![Val::Int(1)]))))
                .unwrap_err(),
            "Array contains invalid element at 0:\n  - Expected link to be a CID instead of 1"
        );
        assert!(Schema::String.optional().read(None).unwrap().is_none());
        assert_eq!(
            Schema::String
                .optional()
                .read(Some(&Val::Null))
                .unwrap_err(),
            "Expected value of type string instead got null"
        );
    }

    #[test]
    fn public_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Validator>();
        check::<CapabilityParser>();
        check::<Authorization>();
        check::<ValidationError>();
        check::<Unauthorized>();
    }

    #[test]
    fn ability_covering() {
        assert!(ability_covers("*", "clock/head"));
        assert!(ability_covers("clock/*", "clock/head"));
        assert!(ability_covers("clock/*", "clock/a/b"));
        assert!(ability_covers("clock/head", "clock/head"));
        assert!(!ability_covers("clock/he*", "clock/head"));
        assert!(!ability_covers("store/*", "clock/head"));
        assert!(!ability_covers("clock/head", "clock/*"));
    }

    #[test]
    fn unknown_intersection_follows_ucanto() {
        let a = Source { node: 0, index: 0 };
        let b = Source { node: 1, index: 0 };
        let c = Source { node: 2, index: 0 };
        assert_eq!(intersection(&[a, b, c], &[c, a]), vec![c, a]);
        assert_eq!(intersection(&[a, b], &[b, a]), vec![b, a]);
        assert_eq!(intersection(&[a], &[b, c]), Vec::<Source>::new());
    }
}
