-- wrk script: POST real merge deliveries, each one a DISTINCT cleanup (its own MR iid and branch).
-- The body template comes from bench/intake.py (BENCH_BODY): @@IID@@ and @@BRANCH@@ are filled in.
local template
local counter = 0
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
  template = f:read("*a")
  f:close()
  salt = os.getenv("BENCH_SALT") or "0"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-Gitlab-Event"] = "Merge Request Hook"
  wrk.headers["X-Gitlab-Token"] = os.getenv("BENCH_TOKEN")
  wrk.headers["User-Agent"] = "GitLab/17.5.0"
end

function request()
  counter = counter + 1
  -- unique across threads and runs: thread id, per-thread counter, run salt
  local iid = tostring(tonumber(salt) * 100000000 + tid * 10000000 + counter)
  local body = template:gsub("@@IID@@", iid):gsub("@@BRANCH@@", "feature/bench-" .. iid)
  wrk.headers["Idempotency-Key"] = "bench-" .. iid
  return wrk.format(nil, "/hooks/gitlab", nil, body)
end
