//! Certificate subjects with several O attributes.
//!
//! Upstream's x509 authenticator reads a user's groups from the O attributes of the client
//! certificate's subject, one group per attribute. rcgen's `DistinguishedName` keeps one value per
//! attribute type, so it cannot express two groups. Here the subject is DER-encoded by hand and
//! spliced into the certificate rcgen produced, and the to-be-signed part is signed again with the
//! same CA key. Everything else (serial, validity, key, extensions, issuer) stays rcgen's.

use anyhow::{anyhow, bail, ensure};
use base64::Engine;
use rcgen::{KeyPair, SigningKey};

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const UTF8_STRING: u8 = 0x0c;
const BIT_STRING: u8 = 0x03;
const EXPLICIT_0: u8 = 0xa0;
/// id-at-organizationName (2.5.4.10) and id-at-commonName (2.5.4.3), DER-encoded.
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Splits `buf` into its first TLV and the rest; the TLV comes back whole, with its content range.
fn next_tlv(buf: &[u8]) -> anyhow::Result<(&[u8], std::ops::Range<usize>, &[u8])> {
    let short = || anyhow!("truncated DER");
    let first = *buf.get(1).ok_or_else(short)?;
    let (hdr, len) = if first < 0x80 {
        (2, first as usize)
    } else {
        let n = (first & 0x7f) as usize;
        ensure!((1..=4).contains(&n), "unsupported DER length");
        let len = buf.get(2..2 + n).ok_or_else(short)?.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (2 + n, len)
    };
    let end = hdr.checked_add(len).filter(|e| *e <= buf.len()).ok_or_else(short)?;
    Ok((&buf[..end], hdr..end, &buf[end..]))
}

fn children(tlv: &[u8]) -> anyhow::Result<Vec<&[u8]>> {
    let (whole, content, rest) = next_tlv(tlv)?;
    ensure!(rest.is_empty(), "trailing bytes after DER value");
    let mut buf = &whole[content];
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (child, _, rest) = next_tlv(buf)?;
        out.push(child);
        buf = rest;
    }
    Ok(out)
}

/// `O=<org>…, CN=<cn>`, organisations first, the order kubeadm and Go's crypto/x509 produce.
pub(crate) fn subject_der(common_name: &str, organizations: &[&str]) -> Vec<u8> {
    let atv = |oid: &[u8], value: &str| tlv(SET, &tlv(SEQUENCE, &[tlv(OID, oid), tlv(UTF8_STRING, value.as_bytes())].concat()));
    let rdns: Vec<Vec<u8>> = organizations.iter().map(|o| atv(OID_O, o)).chain([atv(OID_CN, common_name)]).collect();
    tlv(SEQUENCE, &rdns.concat())
}

/// `cert_der` with its subject replaced by `subject` (a DER Name), re-signed by `issuer_key`, which
/// must be the key that signed it.
pub(crate) fn replace_subject(cert_der: &[u8], subject: &[u8], issuer_key: &KeyPair) -> anyhow::Result<Vec<u8>> {
    let [tbs, alg, _sig] = children(cert_der)?[..] else { bail!("a certificate has three parts") };
    let mut parts = children(tbs)?;
    // version, serial, signature, issuer, validity, subject, …: rcgen always writes the version.
    ensure!(parts.len() >= 7 && parts[0].first() == Some(&EXPLICIT_0), "unexpected TBSCertificate layout");
    parts[5] = subject;
    let tbs = tlv(SEQUENCE, &parts.concat());
    let signature = issuer_key.sign(&tbs).map_err(|e| anyhow!("signing: {e}"))?;
    let bits = tlv(BIT_STRING, &[&[0u8][..], &signature].concat());
    Ok(tlv(SEQUENCE, &[tbs.as_slice(), alg, &bits].concat()))
}

pub(crate) fn cert_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let content = vec![7u8; len];
            let enc = tlv(SEQUENCE, &content);
            let (whole, range, rest) = next_tlv(&enc).unwrap();
            assert_eq!((whole.len(), &whole[range], rest.len()), (enc.len(), content.as_slice(), 0));
        }
        assert!(next_tlv(&[0x30, 0x05, 1]).is_err());
        assert!(next_tlv(&[0x30]).is_err());
    }

    #[test]
    fn subject_parses_with_every_organization() {
        let der = subject_der("system:node:n1", &["system:nodes", "ops", "ünïcode"]);
        let (rest, name) = <x509_parser::x509::X509Name as x509_parser::prelude::FromDer<_>>::from_der(&der).unwrap();
        assert!(rest.is_empty());
        let orgs: Vec<&str> = name.iter_organization().map(|o| o.as_str().unwrap()).collect();
        assert_eq!(orgs, ["system:nodes", "ops", "ünïcode"]);
        assert_eq!(name.iter_common_name().next().unwrap().as_str().unwrap(), "system:node:n1");
    }
}
