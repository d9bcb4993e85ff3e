//! Who a request is: the CN/O of a verified client certificate (upstream's x509 authenticator), or
//! a static bearer token from a token file (upstream's `--token-auth-file`).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use ring::digest::{SHA256, digest};
use rustls::pki_types::CertificateDer;

/// The group every authenticated user is in.
pub const ALL_AUTHENTICATED: &str = "system:authenticated";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    /// Empty for certificate users, as upstream leaves it.
    pub uid: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    /// Upstream's AuthenticatedGroupAdder: every authenticated user except `system:anonymous` gets
    /// `system:authenticated`, unless the authenticator already put it (or its opposite) there.
    fn with_authenticated_group(mut self) -> UserInfo {
        let marked = self.groups.iter().any(|g| g == ALL_AUTHENTICATED || g == "system:unauthenticated");
        if self.name != "system:anonymous" && !marked {
            self.groups.push(ALL_AUTHENTICATED.to_string());
        }
        self
    }
}

/// The user of a client certificate chain, leaf first: CN is the name, each O a group. The chain
/// must already have been verified against the cluster CA (rustls does that during the handshake
/// with [`crate::ClusterPki::server_config`]); this only reads names. None when the leaf has no
/// CN, which upstream also refuses.
pub fn client_identity(peer_certs: &[CertificateDer<'_>]) -> Option<UserInfo> {
    let leaf = peer_certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let subject = cert.subject();
    // Go's pkix.Name keeps the last CN when there are several; upstream reads that one.
    let name = subject.iter_common_name().filter_map(|cn| cn.as_str().ok()).last()?.to_string();
    if name.is_empty() {
        return None;
    }
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    Some(UserInfo { name, uid: String::new(), groups }.with_authenticated_group())
}

/// Static bearer tokens (upstream's `--token-auth-file`). Tokens are kept only as SHA-256 digests
/// and every lookup compares against all of them in constant time, so neither memory dumps nor
/// response timing give a token away.
pub struct TokenAuthenticator {
    tokens: Vec<([u8; 32], UserInfo)>,
}

impl std::fmt::Debug for TokenAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthenticator").field("tokens", &self.tokens.len()).finish()
    }
}

/// Splits one CSV line, honouring double quotes (the groups column is quoted when it has commas)
/// and `""` as an escaped quote, like Go's encoding/csv which upstream uses.
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

fn token_digest(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

impl TokenAuthenticator {
    /// Reads `token,user,uid[,"group1,group2"]` lines (upstream's format). Blank lines and lines
    /// starting with `#` are skipped; a malformed line is an error naming the file and line.
    pub fn load(path: &Path) -> anyhow::Result<TokenAuthenticator> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading token file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("token file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<TokenAuthenticator> {
        let mut by_token: HashMap<[u8; 32], (usize, UserInfo)> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line).map_err(|e| anyhow!("line {n}: {e}"))?;
            let fields: Vec<&str> = fields.iter().map(|f| f.trim()).collect();
            if fields.len() < 3 {
                bail!("line {n}: expected at least 3 columns (token, user name, user uid), found {}", fields.len());
            }
            if fields.len() > 4 {
                bail!(
                    "line {n}: expected at most 4 columns (token, user name, user uid, groups); quote the groups column if it has commas"
                );
            }
            let (token, name, uid) = (fields[0], fields[1], fields[2]);
            if token.is_empty() {
                bail!("line {n}: empty token");
            }
            if name.is_empty() {
                bail!("line {n}: empty user name");
            }
            let groups = fields
                .get(3)
                .map(|g| g.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
                .unwrap_or_default();
            let user = UserInfo { name: name.to_string(), uid: uid.to_string(), groups }.with_authenticated_group();
            // Upstream lets a repeated token's last line win, with a warning; so do we.
            if let Some((first, _)) = by_token.insert(token_digest(token), (n, user)) {
                tracing::warn!("token file: line {n} repeats the token of line {first}; line {n} wins");
            }
        }
        let mut tokens: Vec<_> = by_token.into_iter().collect();
        tokens.sort_by_key(|(_, (n, _))| *n);
        Ok(TokenAuthenticator { tokens: tokens.into_iter().map(|(d, (_, user))| (d, user)).collect() })
    }

    /// The user for a bearer token, if it is in the file.
    pub fn authenticate(&self, bearer: &str) -> Option<UserInfo> {
        if bearer.is_empty() {
            return None;
        }
        let presented = token_digest(bearer);
        let mut found = None;
        // No early exit: the time taken must not depend on which entry, if any, matched.
        for (d, user) in &self.tokens {
            if constant_time_eq(d, &presented) {
                found = Some(user);
            }
        }
        found.cloned()
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_users_and_groups() {
        let text = "# tokens for the test cluster\n\
                    abc,alice,uid-1,\"dev,ops\"\n\
                    \n\
                    xyz,bob,uid-2\r\n\
                    q1, carol , uid-3 ,\"say \"\"hi\"\", system:authenticated\"\n\
                    lone,dave,uid-4,single\n";
        let a = TokenAuthenticator::parse(text).unwrap();
        assert_eq!(a.len(), 4);
        assert_eq!(
            a.authenticate("abc").unwrap(),
            UserInfo { name: "alice".into(), uid: "uid-1".into(), groups: vec!["dev".into(), "ops".into(), ALL_AUTHENTICATED.into()] }
        );
        assert_eq!(a.authenticate("xyz").unwrap().groups, [ALL_AUTHENTICATED]);
        let carol = a.authenticate("q1").unwrap();
        assert_eq!((carol.name.as_str(), carol.uid.as_str()), ("carol", "uid-3"));
        assert_eq!(carol.groups, ["say \"hi\"", ALL_AUTHENTICATED], "not added twice");
        assert_eq!(a.authenticate("lone").unwrap().groups, ["single", ALL_AUTHENTICATED]);
        for wrong in ["nope", "", "ab", "abcd", "ABC", "abc "] {
            assert!(a.authenticate(wrong).is_none(), "{wrong:?}");
        }
        assert!(!format!("{a:?}").contains("abc"), "Debug must not print tokens");
    }

    #[test]
    fn token_file_last_duplicate_wins_like_upstream() {
        let a = TokenAuthenticator::parse("t,first,1\nt,second,2\n").unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a.authenticate("t").unwrap().name, "second");
    }

    #[test]
    fn token_file_bad_lines_name_their_line() {
        for (text, line, what) in [
            ("ok,u,1\nbad-line\n", 2, "at least 3 columns"),
            ("ok,u,1\n\n# c\nt,u\n", 4, "at least 3 columns"),
            ("t,u,1,\"open\n", 1, "unterminated quote"),
            ("a,u,1\n,u,2\n", 2, "empty token"),
            ("a,,1\n", 1, "empty user name"),
            ("a,u,1,g1,g2\n", 1, "quote the groups column"),
        ] {
            let err = TokenAuthenticator::parse(text).unwrap_err().to_string();
            assert!(err.starts_with(&format!("line {line}: ")), "{text:?}: {err}");
            assert!(err.contains(what), "{text:?}: {err}");
        }
    }

    #[test]
    fn token_file_load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, "secret,admin,0,system:masters\n").unwrap();
        let a = TokenAuthenticator::load(&path).unwrap();
        assert_eq!(a.authenticate("secret").unwrap().groups, ["system:masters", ALL_AUTHENTICATED]);
        std::fs::write(&path, "x\n").unwrap();
        let err = format!("{:#}", TokenAuthenticator::load(&path).unwrap_err());
        assert!(err.contains("tokens.csv") && err.contains("line 1"), "{err}");
        assert!(TokenAuthenticator::load(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn certificate_users_get_the_authenticated_group_once() {
        let u = UserInfo { name: "x".into(), uid: String::new(), groups: vec![ALL_AUTHENTICATED.into()] }.with_authenticated_group();
        assert_eq!(u.groups, [ALL_AUTHENTICATED]);
        let anon = UserInfo { name: "system:anonymous".into(), uid: String::new(), groups: vec![] }.with_authenticated_group();
        assert!(anon.groups.is_empty());
    }
}
