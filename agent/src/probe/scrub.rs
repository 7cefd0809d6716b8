//! What of a process's command line leaves the host: scrubbed of secrets
//! by default, before anything is sent or printed.
//!
//! Command lines routinely carry passwords, tokens and connection strings
//! (`--db-password=hunter2`, `postgres://app:s3cret@db/prod`). The agent
//! reads a socket owner's command line from `/proc/PID/cmdline` and, with
//! [`OwnerArgs::Scrubbed`] (the default), masks:
//!
//! - the value of an argument whose name holds a sensitive word
//!   ([`SENSITIVE_WORDS`], and the operator's own): `--name=value`,
//!   `-name=value` and `NAME=value` keep their name; `--name value` and
//!   `-name value` mask the argument after the name;
//! - the password of any URL's userinfo (`scheme://user:password@host`),
//!   wherever it appears.
//!
//! A name matches a word when the word appears in it, letters compared
//! without case and with `-` read as `_` (`--API-Key` holds `api_key`). The
//! executable itself is only ever scrubbed of URL passwords. The
//! environment is never read.
//!
//! [`OwnerArgs::None`] sends the executable alone, [`OwnerArgs::Full`] the
//! whole command line as the kernel has it.

use serde::{Deserialize, Serialize};

/// What replaces a secret.
pub const MASK: &str = "********";

/// The words that make an argument's value a secret, always checked.
pub const SENSITIVE_WORDS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "access_key",
    "auth",
    "credential",
    "private_key",
];

/// How much of an owner's command line the agent sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerArgs {
    /// The command line with secrets masked.
    #[default]
    Scrubbed,
    /// The executable alone.
    None,
    /// Everything, as the kernel has it.
    Full,
}

impl OwnerArgs {
    pub const ALL: [OwnerArgs; 3] = [OwnerArgs::Scrubbed, OwnerArgs::None, OwnerArgs::Full];

    pub fn id(self) -> &'static str {
        match self {
            OwnerArgs::Scrubbed => "scrubbed",
            OwnerArgs::None => "none",
            OwnerArgs::Full => "full",
        }
    }

    /// Parses an id (as flags and the file spell it).
    pub fn parse(s: &str) -> Result<OwnerArgs, String> {
        Self::ALL
            .into_iter()
            .find(|a| a.id() == s)
            .ok_or_else(|| format!("`{s}`: want scrubbed, none or full"))
    }
}

/// Turns a process's arguments into the command line that is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scrubber {
    args: OwnerArgs,
    /// [`SENSITIVE_WORDS`] and the operator's, lower case, `-` as `_`.
    words: Vec<String>,
}

impl Default for Scrubber {
    fn default() -> Self {
        Scrubber::new(OwnerArgs::Scrubbed, &[])
    }
}

/// Lower case, `-` as `_`: how names and words are compared.
fn fold(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

impl Scrubber {
    /// A scrubber for `args`, with `extra` words besides the built-in ones.
    pub fn new(args: OwnerArgs, extra: &[String]) -> Scrubber {
        let mut words: Vec<String> = SENSITIVE_WORDS.iter().map(|w| fold(w)).collect();
        for w in extra {
            let w = fold(w.trim());
            if !w.is_empty() && !words.contains(&w) {
                words.push(w);
            }
        }
        Scrubber { args, words }
    }

    pub fn args(&self) -> OwnerArgs {
        self.args
    }

    fn sensitive(&self, name: &str) -> bool {
        let name = fold(name);
        self.words.iter().any(|w| name.contains(w.as_str()))
    }

    /// The command line to send for `argv` (the executable first), its
    /// arguments joined by spaces.
    pub fn command<S: AsRef<str>>(&self, argv: &[S]) -> String {
        let mut out: Vec<String> = Vec::with_capacity(argv.len());
        let Some((exe, rest)) = argv.split_first() else {
            return String::new();
        };
        match self.args {
            OwnerArgs::Full => return join(argv.iter().map(AsRef::as_ref)),
            OwnerArgs::None => return mask_urls(exe.as_ref()),
            OwnerArgs::Scrubbed => out.push(mask_urls(exe.as_ref())),
        }
        let mut mask_next = false;
        for arg in rest {
            let arg = arg.as_ref();
            if std::mem::take(&mut mask_next) && !arg.starts_with("--") {
                out.push(MASK.to_string());
                continue;
            }
            out.push(self.argument(arg, &mut mask_next));
        }
        join(out.iter().map(String::as_str))
    }

    /// One argument, scrubbed; sets `mask_next` when it is a sensitive
    /// name whose value is the next argument.
    fn argument(&self, arg: &str, mask_next: &mut bool) -> String {
        let flag = arg.trim_start_matches('-');
        let dashes = arg.len() - flag.len();
        match flag.split_once('=') {
            // --name=value, -name=value, NAME=value.
            Some((name, _)) if !name.is_empty() && is_name(name) && self.sensitive(name) => {
                format!("{}{name}={MASK}", &arg[..dashes])
            }
            Some(_) => mask_urls(arg),
            // --name value, -name value.
            None if dashes > 0 && is_name(flag) && self.sensitive(flag) => {
                *mask_next = true;
                arg.to_string()
            }
            None => mask_urls(arg),
        }
    }
}

/// Whether `s` can be an option's or a variable's name (not a path, a
/// URL or a sentence that happens to hold an `=`).
fn is_name(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

fn join<'a>(parts: impl Iterator<Item = &'a str>) -> String {
    parts.collect::<Vec<_>>().join(" ")
}

/// `s` with the password of every URL's userinfo masked:
/// `scheme://user:password@host` → `scheme://user:********@host`.
pub fn mask_urls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#' or space.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                let userinfo = &authority[..userinfo_end];
                match userinfo.split_once(':') {
                    Some((user, _password)) => {
                        out.push_str(user);
                        out.push(':');
                        out.push_str(MASK);
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrub(argv: &[&str]) -> String {
        Scrubber::default().command(argv)
    }

    #[test]
    fn each_form_of_a_sensitive_argument_is_masked_and_the_rest_kept() {
        assert_eq!(
            scrub(&[
                "python3",
                "server.py",
                "--db-password=hunter2",
                "--api-key",
                "AKIA123SECRET",
                "--port",
                "8080"
            ]),
            "python3 server.py --db-password=******** --api-key ******** --port 8080"
        );
        assert_eq!(
            scrub(&["app", "-token", "abc", "-v"]),
            "app -token ******** -v"
        );
        assert_eq!(scrub(&["app", "-secret=x"]), "app -secret=********");
        assert_eq!(
            scrub(&["env", "AWS_SECRET_ACCESS_KEY=wJalr", "PATH=/bin", "run"]),
            "env AWS_SECRET_ACCESS_KEY=******** PATH=/bin run"
        );
        assert_eq!(scrub(&["app", "--PassWD", "x"]), "app --PassWD ********");
        for word in SENSITIVE_WORDS {
            let got = scrub(&["app", &format!("--my-{word}=v")]);
            assert!(got.ends_with("=********"), "{word}: {got}");
        }
    }

    #[test]
    fn a_name_not_followed_by_its_value_masks_nothing_else() {
        // A sensitive flag followed by another flag: a switch, no value.
        assert_eq!(
            scrub(&["app", "--use-token", "--verbose", "x"]),
            "app --use-token --verbose x"
        );
        // Last argument: nothing to mask.
        assert_eq!(scrub(&["app", "--password"]), "app --password");
        // A value that merely holds a word is not a name.
        assert_eq!(
            scrub(&["app", "reset-password.html"]),
            "app reset-password.html"
        );
        assert_eq!(
            scrub(&["sh", "-c", "echo token=abc"]),
            "sh -c echo token=abc",
            "a sentence is not a name=value"
        );
    }

    #[test]
    fn a_urls_password_is_masked_wherever_it_stands() {
        assert_eq!(
            scrub(&[
                "psql",
                "postgres://app:s3cret@db.internal:5432/prod?sslmode=require"
            ]),
            "psql postgres://app:********@db.internal:5432/prod?sslmode=require"
        );
        assert_eq!(
            scrub(&[
                "worker",
                "--broker=amqp://guest:guest@mq/vhost",
                "--db",
                "redis://:pw@r"
            ]),
            "worker --broker=amqp://guest:********@mq/vhost --db redis://:********@r"
        );
        // A user without a password, and no userinfo at all: kept.
        assert_eq!(
            scrub(&["git", "ssh://git@host/repo"]),
            "git ssh://git@host/repo"
        );
        assert_eq!(scrub(&["curl", "http://host/a@b"]), "curl http://host/a@b");
        assert_eq!(
            mask_urls("a https://u:p@h b ftp://x:y@z/c"),
            "a https://u:********@h b ftp://x:********@z/c"
        );
    }

    #[test]
    fn words_added_by_the_operator_count_too() {
        let s = Scrubber::new(
            OwnerArgs::Scrubbed,
            &["Session-ID".to_string(), " ".to_string()],
        );
        assert_eq!(
            s.command(&["app", "--session-id", "42", "--user", "bob"]),
            "app --session-id ******** --user bob"
        );
        assert_eq!(
            s.command(&["app", "--pwd=x"]),
            "app --pwd=********",
            "built-ins stay"
        );
    }

    #[test]
    fn none_sends_the_executable_and_full_everything() {
        let argv = ["/usr/bin/app", "--password=x", "postgres://u:p@h"];
        let none = Scrubber::new(OwnerArgs::None, &[]);
        assert_eq!(none.command(&argv), "/usr/bin/app");
        let full = Scrubber::new(OwnerArgs::Full, &[]);
        assert_eq!(
            full.command(&argv),
            "/usr/bin/app --password=x postgres://u:p@h"
        );
        assert_eq!(Scrubber::default().command::<&str>(&[]), "");
        for a in OwnerArgs::ALL {
            assert_eq!(OwnerArgs::parse(a.id()), Ok(a));
        }
        assert!(OwnerArgs::parse("some").is_err());
    }

    #[test]
    fn odd_bytes_never_panic() {
        for s in [
            "://", "a://@", "x://:@", "--=", "=", "-", "--", "é=ü", "://a:b@",
        ] {
            let _ = scrub(&["app", s, s]);
            let _ = mask_urls(s);
        }
    }
}
