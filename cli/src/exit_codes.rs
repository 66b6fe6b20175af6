//! The exit status of every command, shown at the end of its `--help`.
//!
//! The same meanings everywhere: 0 success; 1 failure (an error printed on
//! stderr as `error: ...`, or findings for the commands that check something);
//! 2 a usage error (unknown flag, missing or bad value: clap's own exit status);
//! 75 (`EX_TEMPFAIL`, from sysexits.h) "not done, try again later" where a
//! command has such a state. A command that receives a second Ctrl-C while
//! stopping, or does not stop within `shutdown_timeout_secs`, exits 1.

/// `conduit` itself.
pub const MAIN: &str = "Exit status: 0 success; 1 failure (an `error:` line on stderr says what \
and what to do next); 2 usage error; 75 try again later (publish, worker --once). \
Each command's --help lists its own.";

/// `conduit check`.
pub const CHECK: &str = "Exit status:
  0  the configuration is valid (and, with --connect, every cluster's storage is reachable)
  1  it is not: a bad key or value, an empty file or no [clusters.NAME] (nothing to run),
     or storage that cannot be reached
  2  usage error";

/// `conduit collector`.
pub const COLLECTOR: &str = "Exit status:
  0  stopped cleanly (SIGINT or SIGTERM): every acknowledged event is durable, files closed
  1  could not start (bad config, address in use, storage unreachable) or did not stop
     within shutdown_timeout_secs
  2  usage error";

/// `conduit publish`.
pub const PUBLISH: &str = "Exit status:
  0   every line was acknowledged by a collector
  1   a line failed: refused, not acknowledged within --timeout-secs, or no collector
      could be connected to within --give-up-secs (each address is named with the cause:
      connection refused, timed out, DNS lookup failed, and the tries)
  75  with --spool-dir: every line acknowledged or spooled, some still in the spool (the
      next run with the same --spool-dir sends them first)
  2   usage error";

/// `conduit tail`.
pub const TAIL: &str = "Exit status:
  0  --to reached, Ctrl-C, or the output pipe closed (| head)
  1  an error: the topic does not exist (the topics that do are listed; --wait-for-topic
     waits instead), a damaged data file (named), storage unreachable
  2  usage error";

/// `conduit lag`.
pub const LAG: &str = "Exit status:
  0  the lag was printed
  1  an error (bad topic or config, storage unreachable)
  2  usage error";

/// `conduit verify`.
pub const VERIFY: &str = "Exit status:
  0  nothing found
  1  findings (listed), or an error
  2  usage error";

/// `conduit audit`.
pub const AUDIT: &str = "Exit status:
  0  no loss, duplication, quarantined file or malformed _audit record in the range
  1  any of those (flagged in the table), or an error
  2  usage error";

/// `conduit worker`.
pub const WORKER: &str = "Exit status:
  0   stopped cleanly (SIGINT or SIGTERM), or the --once pass is done
  1   a job failed (--once), could not start, or did not stop within shutdown_timeout_secs
  75  --once while another worker holds the cluster's lease: nothing done
  2   usage error";

/// `conduit ls`.
pub const LS: &str = "Exit status:
  0  listed (possibly nothing: the summary line on stderr counts the directories)
  1  an error (bad topic, time or config, storage unreachable)
  2  usage error";

/// `conduit table`.
pub const TABLE: &str = "Exit status:
  0  the statements were printed (possibly no partition: the summary line on stderr
     counts the sealed and the not yet sealed directories)
  1  an error (bad topic, name or time, a root that cannot go in a SQL literal, storage
     unreachable)
  2  usage error

Examples:
  conduit table --root conduit-data/dc1 --topic clicks | spark-sql
  conduit table --root hdfs://nn:8020/conduit --topic clicks --format hive > clicks.hql
  conduit table --root hdfs://nn:8020/conduit --topic clicks --since 1h --partitions-only";

/// `conduit up`.
pub const UP: &str = "Exit status:
  0  stopped cleanly after Ctrl-C (or SIGTERM)
  1  nothing started: a port in use (named, with the process holding it) or a config with
     nothing to run; or a child did not stop cleanly
  2  usage error";
