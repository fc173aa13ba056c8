//! Passwords kept out of the DSN (and so out of `ps` and logs), found the
//! way libpq finds them: `PGPASSWORD`, then the password file
//! (`PGPASSFILE`, default `~/.pgpass`).
//!
//! The file's format is libpq's: one `host:port:database:user:password`
//! a line; a field `*` matches anything; `\:` and `\\` escape a colon and a
//! backslash; blank lines and lines starting with `#` are skipped; the
//! first matching line wins. A Unix-socket host matches `localhost`, as in
//! libpq. A file readable or writable by group or others is ignored (libpq
//! does the same), so a leaked-permissions file never authenticates.
//!
//! Invariant: a password is looked up only when the DSN has none; the DSN
//! always wins.

use std::path::{Path, PathBuf};

/// What a password-file line is matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target<'a> {
    pub(crate) host: &'a str,
    pub(crate) port: u16,
    pub(crate) dbname: &'a str,
    pub(crate) user: &'a str,
}

/// The password for `target`: `PGPASSWORD` if `env` has it, else the first
/// matching line of the password file (`passfile` if set, else
/// `PGPASSFILE`, else `~/.pgpass`), if it exists and is private.
pub(crate) fn lookup(
    target: &Target<'_>,
    passfile: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    if let Some(password) = env("PGPASSWORD").filter(|p| !p.is_empty()) {
        return Some(password);
    }
    let path = match passfile {
        Some(path) => path.to_path_buf(),
        None => match env("PGPASSFILE").filter(|p| !p.is_empty()) {
            Some(path) => PathBuf::from(path),
            None => PathBuf::from(env("HOME")?).join(".pgpass"),
        },
    };
    if !is_private(&path) {
        // Once per process: every connection (a node opens several, and
        // reopens them after a database restart) would say it again.
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            crate::trace::warning!(
                path = path.display().to_string(),
                "password file ignored: group or others may read it (chmod 0600)"
            );
        }
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    find(&text, target)
}

/// `true` if only the owner may read or write `path` (always `true` where
/// Unix permissions do not exist).
fn is_private(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o077 == 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

/// The password of the first line of `text` matching `target`.
pub(crate) fn find(text: &str, target: &Target<'_>) -> Option<String> {
    let port = target.port.to_string();
    let wanted = [target.host, port.as_str(), target.dbname, target.user];
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .filter_map(fields)
        .find(|f| {
            f[..4]
                .iter()
                .zip(wanted)
                .all(|((text, wildcard), want)| *wildcard || text == want)
        })
        .map(|mut f| std::mem::take(&mut f[4].0))
}

/// A line's five fields, unescaped, each with whether it is a wildcard (a
/// bare `*`; an escaped `\*` is the character); `None` if it has fewer.
/// The fifth, the password, takes the rest of the line (colons included).
fn fields(line: &str) -> Option<[(String, bool); 5]> {
    let mut out: [(String, bool); 5] = Default::default();
    let mut field = String::new();
    let mut at = 0;
    let mut escaped = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                field.push(chars.next().unwrap_or('\\'));
                escaped = true;
            }
            ':' if at < 4 => {
                let wildcard = field == "*" && !escaped;
                out[at] = (std::mem::take(&mut field), wildcard);
                at += 1;
                escaped = false;
            }
            c => field.push(c),
        }
    }
    if at < 4 {
        return None;
    }
    out[4] = (field, false);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Target<'static> = Target {
        host: "db.example",
        port: 5432,
        dbname: "payments",
        user: "duewheel",
    };

    #[test]
    fn the_first_matching_line_wins_and_stars_match_anything() {
        let text = "# comment\n\
                    other:5432:payments:duewheel:wrong-host\n\
                    db.example:5433:payments:duewheel:wrong-port\n\
                    \n\
                    db.example:*:payments:duewheel:first\n\
                    *:*:*:*:fallback\n";
        assert_eq!(find(text, &TARGET).as_deref(), Some("first"));
        let elsewhere = Target {
            host: "x",
            ..TARGET
        };
        assert_eq!(find(text, &elsewhere).as_deref(), Some("fallback"));
    }

    #[test]
    fn escaped_colons_and_backslashes_are_characters() {
        let text = "db.example:5432:payments:duewheel:pa\\:ss\\\\word:tail\n";
        assert_eq!(find(text, &TARGET).as_deref(), Some("pa:ss\\word:tail"));
        let user = Target {
            user: "a:b",
            ..TARGET
        };
        assert_eq!(
            find("*:*:*:a\\:b:colon-user", &user).as_deref(),
            Some("colon-user")
        );
    }

    #[test]
    fn an_escaped_star_is_not_a_wildcard() {
        assert_eq!(find("\\*:*:*:*:literal-star", &TARGET), None);
        let star = Target {
            host: "*",
            ..TARGET
        };
        assert_eq!(
            find("\\*:*:*:*:literal-star", &star).as_deref(),
            Some("literal-star")
        );
    }

    #[test]
    fn short_lines_and_no_match_give_nothing() {
        assert_eq!(find("db.example:5432:payments\n", &TARGET), None);
        assert_eq!(find("", &TARGET), None);
        assert_eq!(find("a:1:b:c:d", &TARGET), None);
    }

    #[test]
    fn pgpassword_wins_over_the_file_and_an_empty_one_is_ignored() {
        let env = |k: &str| (k == "PGPASSWORD").then(|| "from-env".to_string());
        assert_eq!(lookup(&TARGET, None, env).as_deref(), Some("from-env"));
        let empty = |k: &str| (k == "PGPASSWORD").then(String::new);
        assert_eq!(
            lookup(&TARGET, Some(Path::new("/nonexistent")), empty),
            None
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_may_read_is_ignored_like_libpq_does() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("duewheel-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pgpass");
        std::fs::write(&path, "*:*:*:*:secret\n").unwrap();
        let no_env = |_: &str| None;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(lookup(&TARGET, Some(&path), no_env), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            lookup(&TARGET, Some(&path), no_env).as_deref(),
            Some("secret")
        );
        // PGPASSFILE names it when the config does not.
        let env = |k: &str| (k == "PGPASSFILE").then(|| path.display().to_string());
        assert_eq!(lookup(&TARGET, None, env).as_deref(), Some("secret"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
