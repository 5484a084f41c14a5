//! `globMatch` as Go casbin defines it: Go's `path.Match(pattern, name)`.
//!
//! `*` matches any run of characters except `/`, `?` one character except
//! `/`, `[a-z]` / `[^a-z]` a class (which, as in Go, may match `/`), `\c`
//! the character c. A malformed pattern (`[a`, `[]`, a trailing `\`)
//! matches nothing: Go returns an error there, which fails the request.
//!
//! Ported rather than taken from a glob crate because those add `**`,
//! `{a,b}` and `[!…]`, which Go casbin reads as literals. The chunk-wise
//! search (leftmost match after each star, no backtracking into earlier
//! stars) is Go's, and keeps matching linear in the name per star.

/// Whether `name` matches `pattern`.
pub fn glob_match(name: &str, pattern: &str) -> bool {
    let mut pattern = pattern.as_bytes();
    let mut name = name.as_bytes();
    'pattern: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            // A trailing star matches the rest unless it holds a '/'.
            return !name.contains(&b'/');
        }
        match match_chunk(chunk, name) {
            Chunk::Matched(t) if t.is_empty() || !pattern.is_empty() => {
                name = t;
                continue;
            }
            Chunk::Malformed => return false,
            _ => {}
        }
        if star {
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                match match_chunk(chunk, &name[i + 1..]) {
                    // The last chunk must use up the name.
                    Chunk::Matched(t) if pattern.is_empty() && !t.is_empty() => {}
                    Chunk::Matched(t) => {
                        name = t;
                        continue 'pattern;
                    }
                    Chunk::Malformed => return false,
                    Chunk::Failed => {}
                }
                i += 1;
            }
        }
        return false;
    }
    name.is_empty()
}

/// Leading stars, then the pattern up to the next star outside a class.
fn scan_chunk(pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let stars = pattern.iter().take_while(|&&b| b == b'*').count();
    let pattern = &pattern[stars..];
    let (mut i, mut in_range) = (0, false);
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (stars > 0, &pattern[..i], &pattern[i..])
}

enum Chunk<'n> {
    Matched(&'n [u8]),
    Failed,
    Malformed,
}

/// The first character of `s` (a whole UTF-8 sequence) and its length.
fn first_char(s: &[u8]) -> (Option<char>, usize) {
    let n = match s.first() {
        None => return (None, 0),
        Some(b) if *b < 0x80 => 1,
        Some(b) if *b >= 0xF0 => 4,
        Some(b) if *b >= 0xE0 => 3,
        Some(_) => 2,
    }
    .min(s.len());
    (std::str::from_utf8(&s[..n]).ok().and_then(|c| c.chars().next()), n)
}

/// Matches `chunk` (no stars) at the start of `s`; the rest of `s` on success.
fn match_chunk<'n>(mut chunk: &[u8], mut s: &'n [u8]) -> Chunk<'n> {
    // After a failure Go keeps reading the chunk to report a malformed one.
    let mut failed = false;
    while let Some(&c) = chunk.first() {
        failed |= s.is_empty();
        match c {
            b'[' => {
                let (r, n) = if failed { (None, 0) } else { first_char(s) };
                s = &s[n..];
                let Some((matched, rest)) = class(&chunk[1..], r) else { return Chunk::Malformed };
                chunk = rest;
                failed |= !matched;
            }
            b'?' => {
                if !failed {
                    failed = s[0] == b'/';
                    s = &s[first_char(s).1..];
                }
                chunk = &chunk[1..];
            }
            _ => {
                let literal = if c == b'\\' {
                    chunk = &chunk[1..];
                    match chunk.first() {
                        Some(&b) => b,
                        None => return Chunk::Malformed,
                    }
                } else {
                    c
                };
                if !failed {
                    failed = s[0] != literal;
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    if failed { Chunk::Failed } else { Chunk::Matched(s) }
}

/// A class after its `[`: whether `r` is in it, and the chunk after `]`;
/// None when malformed.
fn class(mut chunk: &[u8], r: Option<char>) -> Option<(bool, &[u8])> {
    let negated = chunk.first() == Some(&b'^');
    if negated {
        chunk = &chunk[1..];
    }
    let (mut matched, mut ranges) = (false, 0);
    loop {
        if chunk.first() == Some(&b']') && ranges > 0 {
            chunk = &chunk[1..];
            break;
        }
        let (lo, rest) = escaped(chunk)?;
        chunk = rest;
        let mut hi = lo;
        if chunk.first() == Some(&b'-') {
            (hi, chunk) = escaped(&chunk[1..])?;
        }
        matched |= r.is_some_and(|r| lo <= r && r <= hi);
        ranges += 1;
    }
    Some((matched != negated, chunk))
}

/// One possibly escaped class character; None when malformed (Go's getEsc).
fn escaped(mut chunk: &[u8]) -> Option<(char, &[u8])> {
    if matches!(chunk.first(), None | Some(b'-' | b']')) {
        return None;
    }
    if chunk[0] == b'\\' {
        chunk = &chunk[1..];
    }
    let (c, n) = first_char(chunk);
    let rest = &chunk[n..];
    // Go: a class must be closed, so something must follow.
    if rest.is_empty() { None } else { Some((c?, rest)) }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn glob_follows_go_path_match() {
        // Go's path.Match tests (src/path/match_test.go).
        let cases: &[(&str, &str, bool)] = &[
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("a[^a][^a][^a]b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("[\\-x]", "-", true),
            ("[\\-x]", "a", false),
            ("[]a]", "]", false),
            ("[-]", "-", false),
            ("[x-]", "x", false),
            ("[x-]", "-", false),
            ("[x-]", "z", false),
            ("[-x]", "x", false),
            ("[-x]", "-", false),
            ("[-x]", "a", false),
            ("\\", "a", false),
            ("[a-b-c]", "a", false),
            ("[", "a", false),
            ("[^", "a", false),
            ("[^bc", "a", false),
            ("a[", "a", false),
            ("a[", "ab", false),
            ("a[", "x", false),
            ("a/b[", "x", false),
            ("*x", "xxx", true),
        ];
        for &(pattern, name, want) in cases {
            assert_eq!(glob_match(name, pattern), want, "path.Match({pattern:?}, {name:?})");
        }
    }
}
