//! What an operator does with the queue (`list`, `show`, `retry`, `replay`, `drop`), shared
//! by `obmguard queue` and the admin listener's `/queue` endpoints so the two cannot differ.
//!
//! Selections are built from words an operator types (`--state dead`, `older_than=2h`) and
//! checked here; the store does the work in short transactions, beside a running `serve`.
//! Output carries identifiers, states and times, never a body unless asked for (`show
//! --body`); bodies hold business data, not secrets (nothing secret is ever stored).

use std::time::{Duration, SystemTime};

use crate::store::{Detail, Filter, State, Store, StoreError, Summary};

/// An operation that changes the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Queued or dead messages become due now (dead ones keep their age).
    Retry,
    /// Dead letters go back in the queue with a fresh age.
    Replay,
    /// Delete the messages.
    Drop,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Retry => "retry",
            Change::Replay => "replay",
            Change::Drop => "drop",
        }
    }

    pub fn parse(word: &str) -> Option<Change> {
        match word {
            "retry" => Some(Change::Retry),
            "replay" => Some(Change::Replay),
            "drop" => Some(Change::Drop),
            _ => None,
        }
    }
}

/// A selection as typed: every field narrows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub id: Option<i64>,
    pub route: Option<String>,
    pub state: Option<String>,
    pub notification_id: Option<String>,
    /// `90s`, `15m`, `2h`, `7d`.
    pub older_than: Option<String>,
    pub limit: Option<usize>,
}

impl Selection {
    /// The store's filter, or what to correct.
    pub fn filter(&self) -> Result<Filter, String> {
        let state = self.state.as_deref().map(str::parse::<State>).transpose()?;
        let mut f = Filter {
            id: self.id,
            route: self.route.clone(),
            state,
            accepted_before: None,
            notification_id: self.notification_id.clone(),
            limit: self.limit,
        };
        if let Some(age) = &self.older_than {
            f = f.older_than(parse_age(age)?);
        }
        Ok(f)
    }

    /// Nothing narrows it: a change would apply to every message.
    pub fn is_everything(&self) -> bool {
        self.id.is_none()
            && self.route.is_none()
            && self.state.is_none()
            && self.notification_id.is_none()
            && self.older_than.is_none()
    }
}

/// `90s`, `15m`, `2h` or `7d` as a duration.
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not an age: write a number and a unit, e.g. 90s, 15m, 2h or 7d");
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(secs))
}

/// Why an operation could not be done.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Selection(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub async fn list(store: &dyn Store, sel: &Selection) -> Result<Vec<Summary>, OpError> {
    let f = sel.filter().map_err(OpError::Selection)?;
    Ok(store.list(&f).await?)
}

pub async fn show(store: &dyn Store, id: i64, body: bool) -> Result<Option<Detail>, OpError> {
    Ok(store.show(id, body).await?)
}

/// Apply `change` to the selection; returns how many messages it changed. `replay` takes dead
/// letters only (it says so when the selection names another state); `drop` refuses a
/// selection of everything (name a route, a state or an id).
pub async fn change(store: &dyn Store, change: Change, sel: &Selection) -> Result<usize, OpError> {
    let mut f = sel.filter().map_err(OpError::Selection)?;
    let now = SystemTime::now();
    Ok(match change {
        Change::Retry => store.retry_now(&f, now).await?,
        Change::Replay => {
            match f.state {
                None => f.state = Some(State::Dead),
                Some(State::Dead) => {}
                Some(other) => {
                    return Err(OpError::Selection(format!(
                        "replay puts dead letters back in the queue: --state {other} has none (use retry for queued messages)"
                    )))
                }
            }
            store.replay(&f, now).await?
        }
        Change::Drop => {
            if sel.is_everything() {
                return Err(OpError::Selection(
                    "drop needs a selection (--route, --state, --id, --notification-id or --older-than): it will not delete every message".into(),
                ));
            }
            store.drop_messages(&f).await?
        }
    })
}

/// A human-readable table of `list`'s result.
pub fn table(rows: &[Summary]) -> String {
    let mut out = format!(
        "{:<8} {:<16} {:<10} {:>8}  {:<24}  {:<24}  {}\n",
        "ID", "ROUTE", "STATE", "ATTEMPTS", "ACCEPTED", "NEXT", "NOTIFICATION IDS / LAST ERROR"
    );
    for r in rows {
        let next = match r.state {
            State::Queued | State::Delivering => crate::audit::timestamp(r.next_attempt_at),
            State::Delivered | State::Dead => "-".into(),
        };
        out.push_str(&format!(
            "{:<8} {:<16} {:<10} {:>8}  {:<24}  {:<24}  {}",
            r.id,
            r.route,
            r.state.as_str(),
            r.attempts,
            crate::audit::timestamp(r.accepted_at),
            next,
            r.notification_ids.join(",")
        ));
        if let Some(e) = &r.last_error {
            out.push_str(&format!(" ({e})"));
        }
        out.push('\n');
    }
    out.push_str(&format!("{} message(s)\n", rows.len()));
    out
}
