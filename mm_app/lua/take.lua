-- uses: _sched, _take
-- take (dispatcher): one task's worth of a user's pending work, placed on the best-fitting live worker.
--
-- Checks the user's quota, the function's max_containers and the fair-share budget, cuts one task's
-- worth off the head of the user's queue, places it by best fit (see mm_app/pending.py), reserves its
-- capacity there and records it in the in-flight ledger, all in one atomic step.
--
-- KEYS by name:
--   pending           the user's pending list          workers          worker id -> WorkerCapacity JSON
--   pending_users     users with pending work (set)    workers_seen     worker id -> Redis time of its beat
--   pending_inputs    user -> inputs pending           worker_used      "<worker>|<resource>" -> reserved
--   running           user -> tasks in flight          worker_target    worker id -> slots filled first
--   quota             user -> its quota                inflight         task id -> ledger record JSON
--   lent              the user's lent slots (zset)     scale_events     capped list of scale decisions
--   function_limit    function -> max_containers       dispatch_log     stream of dispatches
--   function_running  function -> tasks in flight      dispatch_stats   counters
--   function_needs    function -> FunctionNeeds JSON
-- ARGV[1] JSON:
--   user_id; task_id (string, the ledger key); dispatcher_id (string); budget (integer, us, -1: none);
--   held (object: worker id -> {user_id, cpu, memory, gpu, gpu_count}, capacity held for a user's call);
--   default_quota, target_us, max_inputs, overhead_us, min_slots, log_length, events_length (integers);
--   dead_after (number, s); function_stats_prefix (string: the function stats key is it .. function id)
-- Returns a JSON object whose "kind" says what happened, with its fields:
--   QUOTA, EMPTY; FNLIMIT {function_id}; SHORT {cost}; NONEED {function_id}: the function has no needs;
--   NOFIT {never: no live worker could hold it even idle, need, cost};
--   TAKEN {worker_id, queue, entry, cost, need, next_cost: the user's next task's cost, -1: none left}

local k, a = inputs('take', {
  'pending', 'pending_users', 'pending_inputs', 'running', 'quota', 'lent', 'function_limit', 'function_running',
  'function_needs', 'workers', 'workers_seen', 'worker_used', 'worker_target', 'inflight', 'scale_events',
  'dispatch_log', 'dispatch_stats',
}, {
  user_id = 'integer', task_id = 'string', dispatcher_id = 'string', budget = 'integer', held = 'table',
  default_quota = 'integer', target_us = 'integer', max_inputs = 'integer', overhead_us = 'integer',
  min_slots = 'integer', log_length = 'integer', events_length = 'integer', dead_after = 'number',
  function_stats_prefix = 'string',
})
return cjson.encode(take_step(k, a))
