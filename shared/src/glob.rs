//! Shell-style name patterns, as users give them for VMs (`web*`, `db-??`).

/// Shell-style match: `*` any run, `?` any one character; an empty pattern matches everything.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("", "anything"));
        assert!(glob_match("web*", "web01"));
        assert!(glob_match("*01", "web01"));
        assert!(glob_match("w?b*", "web01"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("web?", "web01"));
        assert!(!glob_match("db*", "web01"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
    }
}
