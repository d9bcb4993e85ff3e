//! Kubernetes resource quantities (`100m`, `1.5Gi`, `2e3`) as integers, the way the scheduler
//! needs them. k8s-openapi models `Quantity` as a string, so the arithmetic is ours.

/// The value of `q` in thousandths, rounded up as upstream's `MilliValue` does. `None` when `q` is
/// not a quantity.
pub fn parse_milli(q: &str) -> Option<i64> {
    let q = q.trim();
    let (num, suffix) = split_suffix(q)?;
    let (neg, digits) = match num.as_bytes().first()? {
        b'-' => (true, &num[1..]),
        b'+' => (false, &num[1..]),
        _ => (false, num),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part.bytes().chain(frac_part.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    // mantissa / 10^frac_len × multiplier × 1000, in i128 to keep exactness for every real quantity.
    let mantissa: i128 = format!("{int_part}{frac_part}").trim_start_matches('0').parse().unwrap_or(0);
    let mut scale10: i32 = 3 - frac_part.len() as i32;
    let mut factor: i128 = 1;
    match suffix {
        Suffix::Binary(pow) => factor = 1i128 << (10 * pow),
        Suffix::Decimal(exp) => scale10 += exp,
    }
    let mut v = mantissa.checked_mul(factor)?;
    if scale10 >= 0 {
        v = v.checked_mul(10i128.checked_pow(scale10 as u32)?)?;
    } else {
        let d = 10i128.checked_pow((-scale10) as u32).unwrap_or(i128::MAX);
        v = (v + d - 1) / d; // round up
    }
    let v = i64::try_from(v).unwrap_or(i64::MAX);
    Some(if neg { -v } else { v })
}

/// The value of `q` in whole units, rounded up (upstream's `Value`).
pub fn parse_value(q: &str) -> Option<i64> {
    parse_milli(q).map(|m| if m >= 0 { (m + 999) / 1000 } else { m / 1000 })
}

enum Suffix {
    Binary(u32),
    Decimal(i32),
}

fn split_suffix(q: &str) -> Option<(&str, Suffix)> {
    for (s, pow) in [("Ki", 1), ("Mi", 2), ("Gi", 3), ("Ti", 4), ("Pi", 5), ("Ei", 6)] {
        if let Some(n) = q.strip_suffix(s) {
            return Some((n, Suffix::Binary(pow)));
        }
    }
    if let Some(pos) = q.find(['e', 'E']) {
        let exp: i32 = q[pos + 1..].parse().ok()?;
        return Some((&q[..pos], Suffix::Decimal(exp)));
    }
    for (s, exp) in [("n", -9), ("u", -6), ("m", -3), ("k", 3), ("M", 6), ("G", 9), ("T", 12), ("P", 15), ("E", 18)] {
        if let Some(n) = q.strip_suffix(s) {
            return Some((n, Suffix::Decimal(exp)));
        }
    }
    Some((q, Suffix::Decimal(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        let cases = [
            ("100m", Some(100)),
            ("1", Some(1000)),
            ("1.5", Some(1500)),
            ("0.1", Some(100)),
            ("2k", Some(2_000_000)),
            ("1Ki", Some(1_024_000)),
            ("1Gi", Some(1_073_741_824_000)),
            ("500Mi", Some(524_288_000_000)),
            ("1e3", Some(1_000_000)),
            ("1E-3", Some(1)),
            ("1n", Some(1)), // rounds up
            ("-1", Some(-1000)),
            ("", None),
            ("abc", None),
            ("1.2.3", None),
            ("Mi", None),
        ];
        for (q, want) in cases {
            assert_eq!(parse_milli(q), want, "{q}");
        }
        assert_eq!(parse_value("1Gi"), Some(1 << 30));
        assert_eq!(parse_value("100m"), Some(1));
    }
}
