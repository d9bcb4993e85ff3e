//! Who a request is: the CN/O of a verified client certificate (upstream's x509 authenticator), or
//! a static bearer token from a token file (upstream's `--token-auth-file`).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use rustls::pki_types::CertificateDer;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

/// CN becomes the user name and each O a group; `system:authenticated` is added as upstream does.
pub fn client_identity(certs: &[CertificateDer<'_>]) -> Option<UserInfo> {
    let leaf = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let mut groups: Vec<String> = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    groups.push("system:authenticated".into());
    Some(UserInfo { name, groups })
}

pub struct TokenAuthenticator {
    tokens: HashMap<String, UserInfo>,
}

/// Splits one CSV line, honouring double quotes (the groups column is quoted when it has commas).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    out.push(cur);
    Ok(out)
}

impl TokenAuthenticator {
    /// Reads `token,user,uid[,"group1,group2"]` lines; blank lines and `#` comments are skipped.
    pub fn load(path: &Path) -> anyhow::Result<TokenAuthenticator> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading token file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("token file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<TokenAuthenticator> {
        let mut tokens = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line).map_err(|e| anyhow::anyhow!("line {}: {e}", i + 1))?;
            if fields.len() < 3 {
                bail!("line {}: expected token,user,uid[,groups], got {} fields", i + 1, fields.len());
            }
            let (token, user) = (fields[0].trim(), fields[1].trim());
            if token.is_empty() || user.is_empty() {
                bail!("line {}: token and user must not be empty", i + 1);
            }
            let mut groups: Vec<String> =
                fields.get(3).map(|g| g.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()).unwrap_or_default();
            groups.push("system:authenticated".into());
            if tokens.insert(token.to_string(), UserInfo { name: user.to_string(), groups }).is_some() {
                bail!("line {}: duplicate token", i + 1);
            }
        }
        Ok(TokenAuthenticator { tokens })
    }

    /// Looks the token up comparing every candidate in constant time, so timing reveals nothing.
    pub fn authenticate(&self, token: &str) -> Option<UserInfo> {
        let mut found = None;
        for (t, u) in &self.tokens {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(u.clone());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file() {
        let a = TokenAuthenticator::parse("# comment\nabc,alice,1,\"dev,ops\"\n\nxyz,bob,2\n").unwrap();
        let u = a.authenticate("abc").unwrap();
        assert_eq!(u.name, "alice");
        assert_eq!(u.groups, ["dev", "ops", "system:authenticated"]);
        assert_eq!(a.authenticate("xyz").unwrap().name, "bob");
        assert!(a.authenticate("nope").is_none());
        let err = TokenAuthenticator::parse("ok,u,1\nbad-line\n").err().unwrap().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(TokenAuthenticator::parse("t,u,1,\"open\n").is_err());
    }
}
