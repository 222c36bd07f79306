-- wrk script: sends prepared bodies and checks every answer's keys and predictions.
--
--   wrk -s keyed.lua URL -- BODIES EXPECTED FORMAT SUMMARY_JSON
--
-- BODIES has one request body per line; line i of EXPECTED is the signature a correct
-- answer to body i has. FORMAT says how to read an answer:
--   rows     {"predictions": [{"key", "prediction", ...}]}   signature: key=prediction;...
--   columns  {"keys": [...], "predictions": [...]}          signature: keys|predictions
--   v2       V2: outputs "key" and "predict" (MLServer) or "prediction" (ours)  signature: keys|predictions
--   *_unkeyed  predictions only, the body told by the echoed X-Request-ID
-- Keys are "b<body>-<row>", so an answer says which body it answers. Counts of checked,
-- mismatched and failed (non-200) answers go to SUMMARY_JSON with wrk's own numbers.

local bodies, expected, threads = {}, {}, {}
local format, counter
checked, mismatched, failed, statuses = 0, 0, 0, {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_index", #threads)
end

function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  for line in io.lines(args[2]) do expected[#expected + 1] = line end
  format = args[3]
  counter = (thread_index or 1) * 7919
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local i = counter % #bodies + 1
  -- Headers given here replace wrk.headers: the content type goes with them.
  local headers = {["Content-Type"] = "application/json", ["X-Request-ID"] = "b" .. (i - 1)}
  return wrk.format(nil, nil, headers, bodies[i])
end

local function array_after(body, marker)
  local start = string.find(body, marker, 1, true)
  if not start then return nil end
  local open = string.find(body, "[", start + #marker - 1, true)
  local close = string.find(body, "]", open, true)
  return (string.gsub(string.sub(body, open, close), "%s", ""))
end

local function signature(body, headers)
  local index
  if format == "rows" then
    local parts = {}
    for key, prediction in string.gmatch(body, '"key":(.-),"prediction":(.-)[,}]') do
      parts[#parts + 1] = key .. "=" .. prediction
      index = index or string.match(key, '"b(%d+)%-')
    end
    return table.concat(parts, ";"), index
  elseif format == "columns" then
    local keys = array_after(body, '"keys":')
    index = keys and string.match(keys, '"b(%d+)%-')
    return (keys or "") .. "|" .. (array_after(body, '"predictions":') or ""), index
  elseif format == "v2" then
    local at = string.find(body, '"name":"key"', 1, true) or string.find(body, '"name": "key"', 1, true)
    local keys = at and array_after(string.sub(body, at), '"data":')
    local pat = string.find(body, '"name":"predict"', 1, true) or string.find(body, '"name": "predict"', 1, true)
      or string.find(body, '"name":"prediction"', 1, true)
    local predictions = pat and array_after(string.sub(body, pat), '"data":')
    index = keys and string.match(keys, '"b(%d+)%-')
    return (keys or "") .. "|" .. (predictions or ""), index
  else  -- rows_unkeyed, columns_unkeyed
    local id = headers["x-request-id"] or headers["X-Request-ID"] or ""
    index = string.match(id, "b(%d+)")
    if format == "rows_unkeyed" then
      local parts = {}
      for prediction in string.gmatch(body, '"prediction":(.-)[,}]') do parts[#parts + 1] = prediction end
      return table.concat(parts, ";"), index
    end
    return array_after(body, '"predictions":') or "", index
  end
end

function response(status, headers, body)
  if status ~= 200 then
    failed = failed + 1
    statuses[tostring(status)] = (statuses[tostring(status)] or 0) + 1
    return
  end
  local sig, index = signature(body, headers)
  if index and expected[tonumber(index) + 1] == sig then
    checked = checked + 1
  else
    mismatched = mismatched + 1
  end
end

function done(summary, latency, requests)
  local c, m, f, by_status = 0, 0, 0, {}
  for _, thread in ipairs(threads) do
    c = c + thread:get("checked")
    m = m + thread:get("mismatched")
    f = f + thread:get("failed")
    for status, n in pairs(thread:get("statuses")) do
      by_status[status] = (by_status[status] or 0) + n
    end
  end
  local s = ""
  for status, n in pairs(by_status) do s = s .. status .. ":" .. n .. " " end
  local e = summary.errors
  local out = io.open(os.getenv("WRK_SUMMARY"), "w")
  out:write(string.format(
    '{"requests": %d, "duration_s": %.3f, "p50_ms": %.2f, "p90_ms": %.2f, "p99_ms": %.2f, ' ..
    '"max_ms": %.2f, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"timeouts": %d, "checked": %d, "mismatched": %d, "failed": %d, "statuses": "%s"}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    e.connect, e.read, e.write, e.timeout, c, m, f, s))
  out:close()
end
