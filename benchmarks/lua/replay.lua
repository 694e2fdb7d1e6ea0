-- wrk script: send pre-built raw HTTP requests in file order, one thread, many connections.
--   BENCH_REQUESTS  file of "<length>\n<raw request>" records (made by benchmarks/deliveries.py)
--   BENCH_OUT       where done() writes the summary as JSON
--   BENCH_RECORD    "1": remember every answer's X-Request-Id, status and outcome
-- Past the end of the file the requests start over (the summary says how often).

local requests_file = os.getenv("BENCH_REQUESTS")
local out_file = os.getenv("BENCH_OUT")
local record = os.getenv("BENCH_RECORD") == "1"

local reqs = {}
local n = 0
local i = 0
sent = 0
wraps = 0
acks = {}
statuses = {}

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(requests_file, "rb"))
  while true do
    local header = f:read("*l")
    if not header then break end
    n = n + 1
    reqs[n] = f:read(tonumber(header))
  end
  f:close()
end

function request()
  i = i + 1
  if i > n then
    i = 1
    wraps = wraps + 1
  end
  sent = sent + 1
  return reqs[i]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if record then
    local id = headers["x-request-id"] or headers["X-Request-Id"] or "?"
    local outcome = string.match(body, '"outcome":"(%a+)"') or "-"
    acks[#acks + 1] = id .. " " .. status .. " " .. outcome
  end
end

local function quote(s)
  return '"' .. string.gsub(s, '[%c"\\]', "") .. '"'
end

function done(summary, latency, requests)
  local total_sent, total_wraps, all_acks, all_statuses = 0, 0, {}, {}
  for _, t in ipairs(threads) do
    total_sent = total_sent + t:get("sent")
    total_wraps = total_wraps + t:get("wraps")
    for _, a in ipairs(t:get("acks")) do all_acks[#all_acks + 1] = quote(a) end
    for code, count in pairs(t:get("statuses")) do
      all_statuses[#all_statuses + 1] = '"' .. code .. '":' .. count
    end
  end
  local e = summary.errors
  local f = assert(io.open(out_file, "w"))
  f:write("{")
  f:write('"requests":', summary.requests, ',"duration_us":', summary.duration)
  f:write(',"sent":', total_sent, ',"wraps":', total_wraps)
  f:write(',"errors":{"connect":', e.connect, ',"read":', e.read, ',"write":', e.write)
  f:write(',"status":', e.status, ',"timeout":', e.timeout, "}")
  f:write(',"latency_us":{"p50":', latency:percentile(50), ',"p90":', latency:percentile(90))
  f:write(',"p99":', latency:percentile(99), ',"max":', latency.max, ',"mean":', latency.mean)
  f:write("}")
  f:write(',"statuses":{', table.concat(all_statuses, ","), "}")
  f:write(',"acks":[', table.concat(all_acks, ","), "]")
  f:write("}\n")
  f:close()
end
