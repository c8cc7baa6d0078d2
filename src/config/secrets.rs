//! Secret sources: `{ env = "VAR" }`, `{ file = "path" }` or `{ value = "..." }`, resolved into
//! a [`Secret`]. Messages name the variable or the file, never a value.

use std::path::Path;

use super::build::{dev_pki_hint, resolve, span, Ctx};
use super::diag::FileDiag;
use super::file::{SecretSource, S};
use crate::secret::Secret;

/// Whether a value may be written inline (`{ value = ... }`): only for what is not a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Inline {
    Allowed,
    Refused,
}

/// Resolve one secret source, trimmed and non-empty.
pub(super) fn resolve_secret(
    d: &mut FileDiag,
    ctx: &Ctx,
    base: &Path,
    key: &str,
    s: &S<SecretSource>,
    inline: Inline,
) -> Option<Secret> {
    let src = s.get_ref();
    let n = [src.env.is_some(), src.file.is_some(), src.value.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if n != 1 {
        d.error(
            span(s),
            key,
            "write exactly one of { env = \"VAR\" }, { file = \"/path\" } or { value = \"...\" }",
        );
        return None;
    }
    if let Some(var) = &src.env {
        return match ctx.io.env(var) {
            Some(v) if !v.trim().is_empty() => Some(Secret::new(v.trim())),
            _ => {
                d.error(span(s), key, format!("environment variable {var} is not set (or empty): export it before starting obmguard"));
                None
            }
        };
    }
    if let Some(f) = &src.file {
        let p = resolve(base, f);
        return match ctx.io.read_text(&p) {
            Ok(v) if !v.trim().is_empty() => Some(Secret::new(v.trim())),
            Ok(_) => {
                d.error(span(s), key, format!("{} is empty", p.display()));
                None
            }
            Err(e) => {
                let hint = dev_pki_hint(ctx.io, &[&p]);
                d.error(
                    span(s),
                    key,
                    format!("cannot read {}: {e}{hint}", p.display()),
                );
                None
            }
        };
    }
    if inline == Inline::Refused {
        d.error(span(s), key, "a secret may not be written in a policy file (it would end up in version control): use { env = \"VAR\" } or { file = \"/run/secrets/...\" }");
        return None;
    }
    src.value.as_ref().map(|v| Secret::new(v.as_str()))
}
