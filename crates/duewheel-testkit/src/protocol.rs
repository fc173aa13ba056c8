//! The line protocol of `duewheel node`: one command per line on its stdin,
//! one answer or event per line on its stdout. Written here once; the node
//! writes with [`Display`](fmt::Display), the simulator, the benchmark and
//! the tests read with [`FromStr`] (or [`Line::parse`], which keeps a line
//! outside the protocol whole).
//!
//! stdin ([`Command`]):
//!
//! | line | meaning |
//! |---|---|
//! | `s <id> <deadline_ms> <payload>` | schedule; the payload is one word |
//! | `c <id>` | cancel |
//! | `o <id> <deadline_ms> <qty>` | `--orders` only: create order `id` (reserving `qty` of the stock) and schedule its deadline, in one transaction |
//! | `p <id>` | `--orders` only: pay order `id`: cancel its deadline in the payment's transaction |
//! | `stats` | print one `stats` line |
//! | `quit` | stop (EOF means the same) |
//!
//! stdout ([`Line`]):
//!
//! | line | meaning |
//! |---|---|
//! | `ready <node-id>` | the node runs and takes commands |
//! | `ok <id>` | the schedule is committed |
//! | `err <id\|-> <kind> <message>` | the schedule was not accepted (`-`: the line had no usable id) |
//! | `cancelled <id>`, `fired <id>`, `notfound <id>` | the cancel's answer; to a `p`: paid, refunded (the expiry won), no such order |
//! | `cerr <id\|-> <kind> <message>` | the cancel got no answer |
//! | `ev <id> <attempt> <fired_at_ms> <deadline_ms> <epoch> <payload>` | a delivery |
//! | `stats k=v ...` | the node's counters |
//!
//! Invariant: for every value `v` of these types that the protocol can
//! carry (ids, payloads and node names without whitespace, messages on one
//! line), `v.to_string().parse() == Ok(v)`; the tests below hold it.

use std::fmt;
use std::str::FromStr;

/// Why a line is not in the protocol; it says what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

fn bad<T>(what: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(what.into()))
}

fn number<T: FromStr>(field: &str, what: &str) -> Result<T, ParseError> {
    field
        .parse()
        .map_err(|_| ParseError(format!("{what} must be an unsigned integer, not {field:?}")))
}

/// One line of a node's stdin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `s <id> <deadline_ms> <payload>`.
    Schedule {
        /// The timer's id.
        id: u64,
        /// When it is due, UTC milliseconds (the node's clock).
        deadline_ms: u64,
        /// One word, handed back in its `ev` lines.
        payload: String,
    },
    /// `c <id>`.
    Cancel {
        /// The timer's id.
        id: u64,
    },
    /// `o <id> <deadline_ms> <qty>` (`duewheel node --orders`): the order
    /// row, its stock reservation and its deadline in one transaction.
    /// Answered `ok <id>` or `err <id> <kind> ...` (`soldout`,
    /// `duplicate`, ...).
    Order {
        /// The order's id (also its timer's).
        id: u64,
        /// When the unpaid order expires, UTC milliseconds (the node's
        /// clock).
        deadline_ms: u64,
        /// Units of stock it reserves.
        qty: u32,
    },
    /// `p <id>` (`duewheel node --orders`): the payment; it cancels the
    /// deadline in its transaction. Answered `cancelled <id>` (paid),
    /// `fired <id>` (the expiry won: refunded), `notfound <id>` or `cerr`.
    Pay {
        /// The order's id.
        id: u64,
    },
    /// `stats`.
    Stats,
    /// `quit`.
    Quit,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Schedule {
                id,
                deadline_ms,
                payload,
            } => write!(f, "s {id} {deadline_ms} {payload}"),
            Self::Cancel { id } => write!(f, "c {id}"),
            Self::Order {
                id,
                deadline_ms,
                qty,
            } => write!(f, "o {id} {deadline_ms} {qty}"),
            Self::Pay { id } => write!(f, "p {id}"),
            Self::Stats => f.write_str("stats"),
            Self::Quit => f.write_str("quit"),
        }
    }
}

impl FromStr for Command {
    type Err = ParseError;

    fn from_str(line: &str) -> Result<Self, ParseError> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["s", id, deadline_ms, payload] => Ok(Self::Schedule {
                id: number(id, "the id")?,
                deadline_ms: number(deadline_ms, "the deadline")?,
                payload: (*payload).to_owned(),
            }),
            ["s", ..] => bad("a schedule is `s <id> <deadline_ms> <payload>`"),
            ["c", id] => Ok(Self::Cancel {
                id: number(id, "the id")?,
            }),
            ["c", ..] => bad("a cancel is `c <id>`"),
            ["o", id, deadline_ms, qty] => Ok(Self::Order {
                id: number(id, "the id")?,
                deadline_ms: number(deadline_ms, "the deadline")?,
                qty: number(qty, "the quantity")?,
            }),
            ["o", ..] => bad("an order is `o <id> <deadline_ms> <qty>`"),
            ["p", id] => Ok(Self::Pay {
                id: number(id, "the id")?,
            }),
            ["p", ..] => bad("a payment is `p <id>`"),
            ["stats"] => Ok(Self::Stats),
            ["quit"] => Ok(Self::Quit),
            _ => bad(format!("unknown command: {}", line.trim())),
        }
    }
}

impl Command {
    /// The id the command is about, if it names one that parses: what an
    /// `err`/`cerr` answer to a refused line carries (`-` otherwise).
    pub fn id_of(line: &str) -> Option<u64> {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("s" | "c" | "o" | "p") => fields.next()?.parse().ok(),
            _ => None,
        }
    }
}

/// One `ev` line: a delivery of an expired timer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ev {
    /// The timer's id.
    pub id: u64,
    /// 1 for the first delivery, then +1 per redelivery (as
    /// `duewheel::Event::attempt`).
    pub attempt: u32,
    /// When the node fired it, UTC milliseconds (the node's clock).
    pub fired_at_ms: u64,
    /// Its deadline, UTC milliseconds.
    pub deadline_ms: u64,
    /// The shard epoch under which the node claimed it.
    pub epoch: u64,
    /// The payload given at schedule.
    pub payload: String,
}

/// One line of a node's stdout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// `ready <node-id>`.
    Ready(String),
    /// `ok <id>`: the schedule is committed.
    Ok(u64),
    /// `err <id|-> <kind> <message>`: the schedule was not accepted.
    Err {
        /// The id, `None` for `-` (a line without a usable id).
        id: Option<u64>,
        /// One word: `duplicate`, `invalid`, `unavailable`, `indoubt`,
        /// `shutdown`, ...
        kind: String,
        /// The rest of the line.
        message: String,
    },
    /// `cancelled <id>`: the cancel won.
    Cancelled(u64),
    /// `fired <id>`: the fire won the race with the cancel.
    Fired(u64),
    /// `notfound <id>`.
    NotFound(u64),
    /// `cerr <id|-> <kind> <message>`: the cancel got no answer.
    Cerr {
        /// The id, `None` for `-`.
        id: Option<u64>,
        /// One word: `unavailable`, `indoubt`, `shutdown`, `corrupt`, ...
        kind: String,
        /// The rest of the line.
        message: String,
    },
    /// `ev ...`: a delivery.
    Ev(Ev),
    /// `stats k=v ...`, in the order written.
    Stats(Vec<(String, u64)>),
    /// A line outside the protocol, kept whole (only [`Line::parse`] makes
    /// one; `FromStr` refuses such a line).
    Unknown(String),
}

impl Line {
    /// Parses one stdout line (without its newline); a line outside the
    /// protocol comes back whole as [`Line::Unknown`].
    pub fn parse(line: &str) -> Line {
        line.parse()
            .unwrap_or_else(|_| Line::Unknown(line.to_string()))
    }

    /// An `err`/`cerr` line's message on one line (the protocol's lines
    /// end at the first newline).
    pub fn one_line(message: &str) -> String {
        message.replace(['\n', '\r'], " ")
    }
}

fn write_failure(
    f: &mut fmt::Formatter<'_>,
    word: &str,
    id: &Option<u64>,
    kind: &str,
    message: &str,
) -> fmt::Result {
    match id {
        Some(id) => write!(f, "{word} {id} {kind}")?,
        None => write!(f, "{word} - {kind}")?,
    }
    if message.is_empty() {
        Ok(())
    } else {
        write!(f, " {message}")
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready(node) => write!(f, "ready {node}"),
            Self::Ok(id) => write!(f, "ok {id}"),
            Self::Err { id, kind, message } => write_failure(f, "err", id, kind, message),
            Self::Cancelled(id) => write!(f, "cancelled {id}"),
            Self::Fired(id) => write!(f, "fired {id}"),
            Self::NotFound(id) => write!(f, "notfound {id}"),
            Self::Cerr { id, kind, message } => write_failure(f, "cerr", id, kind, message),
            Self::Ev(e) => write!(
                f,
                "ev {} {} {} {} {} {}",
                e.id, e.attempt, e.fired_at_ms, e.deadline_ms, e.epoch, e.payload
            ),
            Self::Stats(kv) => {
                f.write_str("stats")?;
                for (k, v) in kv {
                    write!(f, " {k}={v}")?;
                }
                Ok(())
            }
            Self::Unknown(text) => f.write_str(text),
        }
    }
}

impl FromStr for Line {
    type Err = ParseError;

    fn from_str(line: &str) -> Result<Self, ParseError> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let one_id = || {
            if rest.contains(' ') {
                bad(format!("`{word}` takes one id"))
            } else {
                number::<u64>(rest, "the id")
            }
        };
        let failure = || {
            let mut parts = rest.splitn(3, ' ');
            let id_field = parts.next().unwrap_or("");
            let Some(kind) = parts.next().filter(|k| !k.is_empty()) else {
                return bad(format!("`{word}` is `{word} <id|-> <kind> <message>`"));
            };
            let message = parts.next().unwrap_or("").to_string();
            let id = if id_field == "-" {
                None
            } else {
                Some(number(id_field, "the id")?)
            };
            Ok((id, kind.to_string(), message))
        };
        Ok(match word {
            "ready" if !rest.is_empty() && !rest.contains(' ') => Line::Ready(rest.to_string()),
            "ok" => Line::Ok(one_id()?),
            "cancelled" => Line::Cancelled(one_id()?),
            "fired" => Line::Fired(one_id()?),
            "notfound" => Line::NotFound(one_id()?),
            "err" => {
                let (id, kind, message) = failure()?;
                Line::Err { id, kind, message }
            }
            "cerr" => {
                let (id, kind, message) = failure()?;
                Line::Cerr { id, kind, message }
            }
            "ev" => {
                let f: Vec<&str> = rest.splitn(6, ' ').collect();
                if f.len() != 6 || f[5].is_empty() || f[5].contains(' ') {
                    return bad(
                        "`ev` is `ev <id> <attempt> <fired_at_ms> <deadline_ms> <epoch> <payload>`",
                    );
                }
                Line::Ev(Ev {
                    id: number(f[0], "the id")?,
                    attempt: number(f[1], "the attempt")?,
                    fired_at_ms: number(f[2], "fired_at_ms")?,
                    deadline_ms: number(f[3], "deadline_ms")?,
                    epoch: number(f[4], "the epoch")?,
                    payload: f[5].to_string(),
                })
            }
            "stats" => Line::Stats(
                rest.split_whitespace()
                    .map(|kv| {
                        let Some((k, v)) = kv.split_once('=') else {
                            return bad(format!("a stats field is `k=v`, not {kv:?}"));
                        };
                        Ok((k.to_string(), number(v, k)?))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            _ => return bad(format!("not a node line: {line:?}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_reads_back_as_written() {
        let lines = [
            Line::Ready("simN-1".into()),
            Line::Ok(17),
            Line::Err {
                id: Some(5),
                kind: "indoubt".into(),
                message: "connection reset by peer".into(),
            },
            Line::Err {
                id: None,
                kind: "invalid".into(),
                message: "bad line".into(),
            },
            Line::Cancelled(3),
            Line::Fired(3),
            Line::NotFound(u64::MAX),
            Line::Cerr {
                id: Some(3),
                kind: "shutdown".into(),
                message: String::new(),
            },
            Line::Ev(Ev {
                id: 9,
                attempt: 2,
                fired_at_ms: 1005,
                deadline_ms: 1000,
                epoch: 4,
                payload: "o8".into(),
            }),
            Line::Stats(vec![("owned".into(), 3), ("pending".into(), 10)]),
        ];
        for line in lines {
            let text = line.to_string();
            assert_eq!(text.parse::<Line>(), Ok(line), "{text:?}");
        }
        let commands = [
            Command::Schedule {
                id: 1,
                deadline_ms: 2,
                payload: "p".into(),
            },
            Command::Cancel { id: 7 },
            Command::Order {
                id: 8,
                deadline_ms: 9,
                qty: 3,
            },
            Command::Pay { id: 8 },
            Command::Stats,
            Command::Quit,
        ];
        for command in commands {
            let text = command.to_string();
            assert_eq!(text.parse::<Command>(), Ok(command), "{text:?}");
        }
    }

    #[test]
    fn lines_outside_the_protocol_are_refused_or_kept_whole() {
        for bad in [
            "ok", "ok x", "ok 1 2", "ev 1 2 3", "hello", "", "err 1", "stats a", "ready",
        ] {
            assert!(bad.parse::<Line>().is_err(), "{bad:?}");
            assert_eq!(Line::parse(bad), Line::Unknown(bad.into()), "{bad:?}");
        }
        for bad in [
            "s 1 2",
            "s x 2 p",
            "c",
            "c -1",
            "c 1 2",
            "stat",
            "s 1 2 p q",
            "o 1 2",
            "o 1 2 x",
            "p",
            "p 1 2",
        ] {
            assert!(bad.parse::<Command>().is_err(), "{bad:?}");
        }
        assert_eq!(Command::id_of("s 12 x"), Some(12));
        assert_eq!(Command::id_of("c x"), None);
    }
}
