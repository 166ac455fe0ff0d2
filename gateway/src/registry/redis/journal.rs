//! Reliable sessions' state in Redis (docs/reliable.md), so a session resumes on any node, also
//! after the node that held it was killed.
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P:rel:{ID}` | hash | `token` (SHA-256, hex), `owner` (node), `out` (last gateway seq), `acked` (last seq the client acked), `in` (last client seq in a backend's hands), `hub`, `user`, `groups`, `metadata`, `suspended` |
//! | `P:relout:{ID}` | stream | unacknowledged gateway messages, entry ID `seq-1`, fields `k` (`t`/`b`) and `p` (payload); trimmed on ack |
//! | `P:relids:{ID}` | zset | message IDs of the last `--resume-buffer` messages kept (score: seq), so a publish or a retried send that reaches the session twice while it moves between nodes is kept once |
//!
//! `{ID}` is a hash tag: both keys of a session live in one slot, so each script below is
//! atomic on Redis Cluster too. Every write that could come from a node that lost the session
//! (a resume elsewhere took it) checks `owner` first. While a session is suspended both keys
//! carry the resume window as TTL, so a session nobody resumes leaves Redis by itself.

use std::collections::BTreeMap;

use bytes::Bytes;
use redis::Value;

use super::{RedisRegistry, RegistryError};
use crate::{
    message::{Kind, Message},
    reliable::Counters,
};

/// Numbers and stores a message if `owner` still holds the session, the buffer has room and
/// the message ID (if any) is not among the last ones kept. For an orphan (`ARGV[6]` = 1: a
/// node that is not the owner keeps it because the owner is gone) the session must also be
/// suspended, or its owner is alive after all. Returns the seq, or -1 (gone), -2 (owned
/// elsewhere), -3 (buffer full), -4 (already kept).
const APPEND: &str = r"
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return -1 end
if owner ~= ARGV[1] then return -2 end
if ARGV[6] == '1' and redis.call('HGET', KEYS[1], 'suspended') ~= '1' then return -2 end
if ARGV[5] ~= '' and redis.call('ZSCORE', KEYS[3], ARGV[5]) then return -4 end
local out = tonumber(redis.call('HGET', KEYS[1], 'out') or '0')
local acked = tonumber(redis.call('HGET', KEYS[1], 'acked') or '0')
if out - acked >= tonumber(ARGV[4]) then return -3 end
out = out + 1
redis.call('HSET', KEYS[1], 'out', out)
redis.call('XADD', KEYS[2], out .. '-1', 'k', ARGV[2], 'p', ARGV[3])
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[3], out, ARGV[5])
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[4]) + 1))
end
return out";

/// Raises `acked` (and trims the stream) or `in`, never lowering either.
const RAISE: &str = r"
if not redis.call('HGET', KEYS[1], 'owner') then return 0 end
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local v = tonumber(ARGV[2])
if v > cur then
  redis.call('HSET', KEYS[1], ARGV[1], v)
  if ARGV[1] == 'acked' then redis.call('XTRIM', KEYS[2], 'MINID', (v + 1) .. '-0') end
end
return 1";

/// Starts the resume window if `owner` still holds the session.
const SUSPEND: &str = r"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'suspended', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('PEXPIRE', KEYS[3], ARGV[2]) end
return 1";

/// Ends the resume window of a session `ARGV[1]` still holds (its client came back to it).
const RESUMED: &str = r"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'suspended')
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
redis.call('PERSIST', KEYS[3])
return 1";

/// Hands the session to `ARGV[2]` if the token digest matches; answers its state (with the
/// previous owner) as a flat list, or nothing.
const CLAIM: &str = r"
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return false end
local prev = redis.call('HGET', KEYS[1], 'owner')
redis.call('HSET', KEYS[1], 'owner', ARGV[2])
redis.call('HDEL', KEYS[1], 'suspended')
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
redis.call('PERSIST', KEYS[3])
local r = redis.call('HGETALL', KEYS[1])
table.insert(r, 'prev')
table.insert(r, prev or '')
return r";

/// Hands a suspended session of the dead node `ARGV[1]` to `ARGV[2]`; answers its state like
/// a claim, or nothing.
const ADOPT: &str = r"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return false end
if redis.call('HGET', KEYS[1], 'suspended') ~= '1' then return false end
redis.call('HSET', KEYS[1], 'owner', ARGV[2])
local r = redis.call('HGETALL', KEYS[1])
table.insert(r, 'prev')
table.insert(r, ARGV[1])
return r";

/// Removes a session's state if `owner` still holds it.
const FORGET: &str = r"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1";

/// The outcome of an append.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Appended {
    Seq(u64),
    /// The session's state is gone (expired or ended).
    Gone,
    /// Another node took the session over.
    Moved,
    /// The client has `--resume-buffer` messages unacknowledged.
    Full,
    /// A message with this ID is kept already.
    Duplicate,
}

/// A session as a resume finds it.
#[derive(Debug)]
pub(crate) struct Claimed {
    /// The token's digest.
    pub token: [u8; 32],
    pub counters: Counters,
    pub hub: String,
    pub user: String,
    pub groups: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    /// The node that held it before.
    pub previous: String,
}

/// What a new reliable session writes.
pub(crate) struct NewState<'a> {
    pub token: &'a [u8; 32],
    pub owner: &'a str,
    pub hub: &'a str,
    pub user: &'a str,
    pub groups: &'a [String],
    pub metadata: &'a BTreeMap<String, String>,
}

impl RedisRegistry {
    fn rel_keys(&self, id: &str) -> (String, String) {
        let tag = format!("{{{id}}}");
        (self.key(&["rel", &tag]), self.key(&["relout", &tag]))
    }

    fn rel_script(&self, script: &str, id: &str) -> redis::Cmd {
        let (state, out) = self.rel_keys(id);
        let ids = self.key(&["relids", &format!("{{{id}}}")]);
        let mut c = redis::cmd("EVAL");
        c.arg(script).arg(3).arg(state).arg(out).arg(ids);
        c
    }

    /// Writes a live session's state again after Redis lost it (a restart without
    /// persistence): counters as this node knows them, nothing kept (what was kept is gone).
    pub(crate) async fn rel_restore(
        &self,
        id: &str,
        s: NewState<'_>,
        counters: Counters,
    ) -> Result<(), RegistryError> {
        self.rel_create(id, s).await?;
        let (state, _) = self.rel_keys(id);
        let c = redis::cmd("HSET")
            .arg(state)
            .arg("out")
            .arg(counters.out)
            .arg("acked")
            .arg(counters.out.max(counters.acked))
            .arg("in")
            .arg(counters.taken)
            .clone();
        self.query::<i64>(c).await.map(drop)
    }

    pub(crate) async fn rel_create(&self, id: &str, s: NewState<'_>) -> Result<(), RegistryError> {
        let (state, out) = self.rel_keys(id);
        let ids = self.key(&["relids", &format!("{{{id}}}")]);
        let mut c = redis::cmd("HSET");
        c.arg(&state)
            .arg("token")
            .arg(hex(s.token))
            .arg("owner")
            .arg(s.owner)
            .arg("out")
            .arg(0)
            .arg("acked")
            .arg(0)
            .arg("in")
            .arg(0)
            .arg("hub")
            .arg(s.hub)
            .arg("user")
            .arg(s.user)
            .arg("groups")
            .arg(serde_json::to_string(s.groups).unwrap_or_else(|_| "[]".into()))
            .arg("metadata")
            .arg(serde_json::to_string(s.metadata).unwrap_or_else(|_| "{}".into()));
        self.batch(vec![redis::cmd("DEL").arg(out).arg(ids).clone(), c])
            .await
            .map(drop)
    }

    pub(crate) async fn rel_append(
        &self,
        id: &str,
        owner: &str,
        message: &Message,
        message_id: &str,
        max: usize,
        orphan: bool,
    ) -> Result<Appended, RegistryError> {
        let kind = match message.kind {
            Kind::Text => "t",
            Kind::Binary => "b",
        };
        let mut c = self.rel_script(APPEND, id);
        c.arg(owner)
            .arg(kind)
            .arg(&message.payload[..])
            .arg(max)
            .arg(message_id)
            .arg(if orphan { "1" } else { "0" });
        Ok(match self.query::<i64>(c).await? {
            -1 => Appended::Gone,
            -2 => Appended::Moved,
            -3 => Appended::Full,
            -4 => Appended::Duplicate,
            n => Appended::Seq(n.max(0) as u64),
        })
    }

    /// The client acknowledged up to `seq`: trims what it has.
    pub(crate) async fn rel_acked(&self, id: &str, seq: u64) -> Result<(), RegistryError> {
        let mut c = self.rel_script(RAISE, id);
        c.arg("acked").arg(seq);
        self.query::<i64>(c).await.map(drop)
    }

    /// A backend has every client message up to `seq`.
    pub(crate) async fn rel_taken(&self, id: &str, seq: u64) -> Result<(), RegistryError> {
        let mut c = self.rel_script(RAISE, id);
        c.arg("in").arg(seq);
        self.query::<i64>(c).await.map(drop)
    }

    /// Starts the resume window; false if another node holds the session now.
    pub(crate) async fn rel_suspend(
        &self,
        id: &str,
        owner: &str,
        window: std::time::Duration,
    ) -> Result<bool, RegistryError> {
        let mut c = self.rel_script(SUSPEND, id);
        c.arg(owner).arg(window.as_millis().max(1) as u64);
        Ok(self.query::<i64>(c).await? == 1)
    }

    /// Ends the resume window of a session `owner` holds; false if another node holds it now.
    pub(crate) async fn rel_resumed(&self, id: &str, owner: &str) -> Result<bool, RegistryError> {
        let mut c = self.rel_script(RESUMED, id);
        c.arg(owner);
        Ok(self.query::<i64>(c).await? == 1)
    }

    /// Takes the session over for `owner` if `token` is its token.
    pub(crate) async fn rel_claim(
        &self,
        id: &str,
        token: &str,
        owner: &str,
    ) -> Result<Option<Claimed>, RegistryError> {
        let mut c = self.rel_script(CLAIM, id);
        c.arg(hex(&crate::reliable::digest(token))).arg(owner);
        Ok(self.query::<Option<Vec<String>>>(c).await?.map(claimed))
    }

    /// Takes a suspended session of `dead` (a node that is gone) for `owner`, so that a live
    /// node keeps what is sent to it until its client resumes.
    pub(crate) async fn rel_adopt(
        &self,
        id: &str,
        dead: &str,
        owner: &str,
    ) -> Result<Option<Claimed>, RegistryError> {
        let mut c = self.rel_script(ADOPT, id);
        c.arg(dead).arg(owner);
        Ok(self.query::<Option<Vec<String>>>(c).await?.map(claimed))
    }
}

/// A session's state as a claim or an adoption answers it (a flat field/value list).
fn claimed(flat: Vec<String>) -> Claimed {
    {
        let mut m: BTreeMap<String, String> = BTreeMap::new();
        let mut it = flat.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            m.insert(k, v);
        }
        let num = |k: &str| m.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Claimed {
            token: m.get("token").and_then(|t| unhex(t)).unwrap_or([0; 32]),
            counters: Counters {
                out: num("out"),
                acked: num("acked"),
                taken: num("in"),
            },
            hub: m.get("hub").cloned().unwrap_or_default(),
            user: m.get("user").cloned().unwrap_or_default(),
            groups: m
                .get("groups")
                .and_then(|g| serde_json::from_str(g).ok())
                .unwrap_or_default(),
            metadata: m
                .get("metadata")
                .and_then(|g| serde_json::from_str(g).ok())
                .unwrap_or_default(),
            previous: m.get("prev").cloned().unwrap_or_default(),
        }
    }
}

impl RedisRegistry {
    /// The stored messages after `seq`, in order (at most `max`).
    pub(crate) async fn rel_after(
        &self,
        id: &str,
        seq: u64,
        max: usize,
    ) -> Result<Vec<(u64, Message)>, RegistryError> {
        let (_, out) = self.rel_keys(id);
        let mut c = redis::cmd("XRANGE");
        c.arg(out)
            .arg(format!("{}-0", seq + 1))
            .arg("+")
            .arg("COUNT")
            .arg(max);
        let entries: Vec<(String, Vec<(String, Value)>)> = self.query(c).await?;
        let mut messages = Vec::with_capacity(entries.len());
        for (entry, fields) in entries {
            let Some(seq) = entry.split('-').next().and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            let (mut kind, mut payload) = (Kind::Text, Bytes::new());
            for (k, v) in fields {
                match k.as_str() {
                    "k" if redis::from_redis_value_ref::<String>(&v).ok().as_deref()
                        == Some("b") =>
                    {
                        kind = Kind::Binary;
                    }
                    "p" => {
                        payload = redis::from_redis_value::<Vec<u8>>(v)
                            .map(Bytes::from)
                            .unwrap_or_default()
                    }
                    _ => {}
                }
            }
            messages.push((seq, Message { kind, payload }));
        }
        Ok(messages)
    }

    /// The last client seq recorded as in a backend's hands.
    pub(crate) async fn rel_in(&self, id: &str) -> Result<u64, RegistryError> {
        let (state, _) = self.rel_keys(id);
        let v: Option<u64> = self
            .query(redis::cmd("HGET").arg(state).arg("in").clone())
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// The node holding a reliable session, if its state is in Redis.
    pub(crate) async fn rel_owner(&self, id: &str) -> Result<Option<String>, RegistryError> {
        let (state, _) = self.rel_keys(id);
        self.query(redis::cmd("HGET").arg(state).arg("owner").clone())
            .await
    }

    pub(crate) async fn rel_set_groups(
        &self,
        id: &str,
        groups: &[String],
    ) -> Result<(), RegistryError> {
        let (state, _) = self.rel_keys(id);
        let c = redis::cmd("HSET")
            .arg(state)
            .arg("groups")
            .arg(serde_json::to_string(groups).unwrap_or_else(|_| "[]".into()))
            .clone();
        self.query::<i64>(c).await.map(drop)
    }

    /// Gives a suspended session's registry record the resume window as TTL (so it leaves
    /// Redis with the session's state if nobody resumes it), or takes the TTL off (`None`).
    pub(crate) async fn rel_record_ttl(
        &self,
        id: &str,
        ttl: Option<std::time::Duration>,
    ) -> Result<(), RegistryError> {
        let key = self.key(&["session", id]);
        let c = match ttl {
            Some(t) => redis::cmd("PEXPIRE")
                .arg(key)
                .arg(t.as_millis().max(1) as u64)
                .clone(),
            None => redis::cmd("PERSIST").arg(key).clone(),
        };
        self.query::<i64>(c).await.map(drop)
    }

    /// Removes an ended session's state, if `owner` still holds it.
    pub(crate) async fn rel_forget(&self, id: &str, owner: &str) -> Result<(), RegistryError> {
        let mut c = self.rel_script(FORGET, id);
        c.arg(owner);
        self.query::<i64>(c).await.map(drop)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
