"""Every key of the shared store, in one place (the task id in a key is always validated first)."""

K_TASK = "task:"  # task:<id> -> the task record
K_STATUS = "status:"  # status:<status>:<id> -> {"step", "owner"}; ids are UUIDv7, so keys sort by age
K_EXPIRES = "expires:"  # expires:<epoch seconds, 14 digits>:<id> -> ""; what cleanup removes
K_STOP = "stop:"  # stop:<id> -> {"at", "by"}; a pending stop request the owner polls
K_IDEMPOTENCY = "idem:"  # idem:<key> -> {"task_id", "fingerprint"}
K_WORKER = "worker:"  # worker:<worker id> -> heartbeat
K_RATE = "rate:"  # rate:<key name> -> {"tokens", "at"}: the POST /run token bucket of one API key
K_COUNTERS = "counters"  # the Counters document (counters.py)
K_LEASE = "lease:"  # lease:<name> -> {"owner", "expires"}
K_CLEANUP = "cleanup:"  # cleanup:schedule, cleanup:last, cleanup:next, cleanup:history, cleanup:totals
K_META = "meta:"  # meta:initialized, meta:rebuild, meta:bad_files
K_DIRTY = "dirty:"  # dirty:<id> -> {"rev", "at"}: the task's JSON file lags the cache; cleared once written
QUEUE_PREFIX = "queue"  # diskcache push/pull keys "queue-<n>" -> task id, FIFO
K_STEP = "step:"  # step:<step name>:<id> -> "": every task of a step, newest last (GET /tasks?step=)
K_EVENTS = "events:"  # events:<id % ring size, 6 digits> -> {"id", ...}: the change feed's ring (events.py)
K_SESSION_SECRET = K_META + "session_secret"  # the key that signs dashboard session cookies (api/sessions.py)
# Orchestration (api/store/orchestration.py)
K_DUE = "due:"  # due:<epoch ms, 15 digits>:<id> -> "": a queued retry that joins the queue at that time
K_DEAD = "dead:"  # dead:<id> -> {"at", "step", "error_type"}: a task that failed after its last attempt
K_SCHEDULE = "schedule:"  # schedule:<schedule id> -> the schedule record (api/orchestration/schedules.py)
K_FIRED = "fired:"  # fired:<schedule id>:<occurrence ISO> -> task id: an occurrence fired once, whoever fired it
K_KEY_HELD = "keyheld:"  # keyheld:<concurrency key>|<id> -> "": a running task holds one unit of that key
K_KEY_WAIT = "keywait:"  # keywait:<concurrency key>|<id> -> "": a queued task waits for that key
K_KEY_LIMIT = "keylimit:"  # keylimit:<concurrency key> -> int: the limit set at run time (PUT /keys/{key})
