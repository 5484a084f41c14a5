//! Unified social credit codes (GB 32100-2015): how enterprises and
//! government departments are named, in tokens, rules and grants.

/// The code's alphabet: digits and upper-case letters without I, O, Z, S, V.
const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const WEIGHTS: [usize; 17] = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28];

fn value(c: u8) -> Option<usize> {
    ALPHABET.iter().position(|&a| a == c)
}

/// The check character's value for the first 17 characters' values.
fn check_value(values: impl Iterator<Item = usize>) -> usize {
    let sum: usize = values.zip(WEIGHTS).map(|(v, w)| v * w).sum();
    (31 - sum % 31) % 31
}

/// A USCC is 18 characters from the alphabet, the last a check character.
pub fn is_uscc(s: &str) -> bool {
    let bytes = s.as_bytes();
    if bytes.len() != 18 {
        return false;
    }
    let Some(values) = bytes.iter().map(|&c| value(c)).collect::<Option<Vec<usize>>>() else { return false };
    values[17] == check_value(values[..17].iter().copied())
}

/// Completes the first 17 characters of a USCC with its check character.
/// Used by the demo and tests to make valid sample codes.
pub fn uscc_with_check(first17: &str) -> String {
    let check = check_value(first17.bytes().map(|b| value(b).unwrap_or(0)));
    format!("{first17}{}", ALPHABET[check] as char)
}
