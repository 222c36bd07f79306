-- wrk script: sends prepared bodies and checks every answer's keys and predictions.
--
--   wrk -s keyed.lua URL -- BODIES EXPECTED FORMAT      (WRK_SUMMARY names the summary file)
--
-- BODIES has one request body per line; line i of EXPECTED is the signature a correct
-- answer to body i has. FORMAT says how to read an answer:
--   rows     {"predictions": [{"key", "prediction", ...}]}   signature: key=prediction;...
--   columns  {"keys": [...], "predictions": [...]}          signature: keys|predictions
--   v2       V2: outputs "key" and "predict" (MLServer) or "prediction" (ours)  signature: keys|predictions
--   v2bin    the same V2 request with the binary tensor data extension (tritonclient's
--            default): BODIES is framed, "<json header length> <body length>\n<body>" per
--            body, sent with Inference-Header-Content-Length; the answer's binary outputs
--            (BYTES, INT64, FP64) are decoded into the same signature as v2's
--   *_unkeyed  predictions only, the body told by the echoed X-Request-ID
-- Keys are "b<body>-<row>", so an answer says which body it answers. Counts of checked,
-- mismatched and failed (non-200) answers go to the summary with wrk's own numbers.
--
-- wrk's own latency statistics count every answer, refusals included, and its Lua API does
-- not say which connection an answer arrived on. So each request carries an X-Request-ID of
-- its own ("b<body>.<thread>.<n>"); where the server echoes it (ours does, MLServer does
-- not), the time from request() to response() of every checked 200 goes into a histogram
-- of 0.1 ms buckets, and the summary's p50_200_ms / p99_200_ms come from it
-- (latency_200_count says how many it holds; 0 where the server echoes no id).

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } keyed_timespec;
  int clock_gettime(int clock, keyed_timespec *ts);
  int memcmp(const void *a, const void *b, size_t n);
]]
local now_ts = ffi.new("keyed_timespec")
local function now_us()
  ffi.C.clock_gettime(1, now_ts)  -- CLOCK_MONOTONIC
  return tonumber(now_ts.tv_sec) * 1e6 + tonumber(now_ts.tv_nsec) / 1e3
end

local bodies, header_lengths, expected, threads = {}, {}, {}, {}
-- The columns formats' expected signature cut in its two arrays, by body: keys, predictions.
local expected_keys, expected_predictions = {}, {}
local format, counter, content_type
local started, started_count = {}, 0
checked, mismatched, failed, statuses = 0, 0, 0, {}
latency_200, latency_200_count = {}, 0  -- 0.1 ms bucket -> count; how many

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_index", #threads)
end

local function read_framed(path)
  local handle = assert(io.open(path, "rb"))
  local data = handle:read("*a")
  handle:close()
  local at = 1
  while at <= #data do
    local newline = string.find(data, "\n", at, true)
    local header_length, length = string.match(string.sub(data, at, newline - 1), "(%d+) (%d+)")
    length = tonumber(length)
    bodies[#bodies + 1] = string.sub(data, newline + 1, newline + length)
    header_lengths[#header_lengths + 1] = header_length
    at = newline + 1 + length
  end
end

function init(args)
  format = args[3]
  if format == "v2bin" then
    read_framed(args[1])
    content_type = "application/octet-stream"
  else
    for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
    content_type = "application/json"
  end
  for line in io.lines(args[2]) do
    expected[#expected + 1] = line
    local cut = string.find(line, "]|", 1, true)
    if cut then
      expected_keys[#expected] = string.sub(line, 1, cut)
      expected_predictions[#expected] = string.sub(line, cut + 2)
    else
      expected_predictions[#expected] = line
    end
  end
  counter = (thread_index or 1) * 7919
  wrk.method = "POST"
  wrk.headers["Content-Type"] = content_type
end

function request()
  counter = counter + 1
  local i = counter % #bodies + 1
  local id = "b" .. (i - 1) .. "." .. (thread_index or 1) .. "." .. counter
  -- Headers given here replace wrk.headers: the content type goes with them.
  local headers = {["Content-Type"] = content_type, ["X-Request-ID"] = id}
  if header_lengths[i] then headers["Inference-Header-Content-Length"] = header_lengths[i] end
  if started_count > 200000 then
    -- Ids of answers that never named them (a server that echoes none) would pile up.
    started, started_count = {}, 0
  end
  started[id] = now_us()
  started_count = started_count + 1
  return wrk.format(nil, nil, headers, bodies[i])
end

-- Whether the server writes compact JSON (no ", " or ": "), told by its first answer: a
-- server writes every answer alike. Looking for them in every answer cost wrk's CPU on the
-- critical path of a one-connection load (two scans of the whole body per array, so more
-- for an answer that carries its keys than for one that does not).
local compact

-- The JSON array after marker, without whitespace. An array of compact JSON is taken as it
-- is: removing whitespace character by character cost about 0.6 ms of wrk's CPU per
-- 10,000-key answer.
local function array_after(body, marker)
  local start = string.find(body, marker, 1, true)
  if not start then return nil end
  local open = string.find(body, "[", start + #marker - 1, true)
  local close = string.find(body, "]", open, true)
  local array = string.sub(body, open, close)
  if compact == nil then
    compact = not (string.find(body, ", ", 1, true) or string.find(body, ": ", 1, true))
  end
  if not compact then
    array = string.gsub(array, "%s", "")
  end
  return array
end

local function u32le(data, at)
  local a, b, c, d = string.byte(data, at, at + 3)
  return a + b * 256 + c * 65536 + d * 16777216
end

-- One binary output's elements as the JSON array text the expected signature holds.
local function binary_json(data, first, size, datatype)
  local parts, at, last = {}, first, first + size - 1
  if datatype == "BYTES" then
    while at <= last do
      local length = u32le(data, at)
      parts[#parts + 1] = '"' .. string.sub(data, at + 4, at + 3 + length) .. '"'
      at = at + 4 + length
    end
  elseif datatype == "INT64" or datatype == "FP64" then
    local buffer = ffi.new("uint8_t[?]", size)
    ffi.copy(buffer, string.sub(data, first, last), size)
    local ctype = datatype == "INT64" and "int64_t*" or "double*"
    local values = ffi.cast(ctype, buffer)
    for n = 0, size / 8 - 1 do
      local value = values[n]
      if datatype == "INT64" then
        parts[#parts + 1] = string.format("%d", tonumber(value))
      else
        parts[#parts + 1] = string.format("%.17g", value)
      end
    end
  else
    return nil
  end
  return "[" .. table.concat(parts, ",") .. "]"
end

-- The v2bin answer: the JSON header's outputs in order, each binary one's bytes after it.
local function binary_signature(body, headers)
  local header_length = tonumber(
    headers["inference-header-content-length"] or headers["Inference-Header-Content-Length"] or ""
  )
  if not header_length then return "", nil end
  local header = string.sub(body, 1, header_length)
  local outputs = string.sub(header, (string.find(header, '"outputs"', 1, true) or 1))
  local found, at, offset = {}, 1, header_length + 1
  while true do
    local name_at, name_end, name = string.find(outputs, '"name":%s*"([^"]*)"', at)
    if not name_at then break end
    local next_at = string.find(outputs, '"name":', name_end + 1, true) or (#outputs + 1)
    local output = string.sub(outputs, name_end + 1, next_at - 1)
    local datatype = string.match(output, '"datatype":%s*"([^"]*)"')
    local size = tonumber(string.match(output, '"binary_data_size":%s*(%d+)'))
    if size then
      found[name] = {offset, size, datatype}
      offset = offset + size
    end
    at = next_at
  end
  local key, prediction = found["key"], found["prediction"] or found["predict"]
  if not key or not prediction then return "", nil end
  local keys = binary_json(body, key[1], key[2], key[3]) or ""
  local predictions = binary_json(body, prediction[1], prediction[2], prediction[3]) or ""
  return keys .. "|" .. predictions, string.match(keys, '"b(%d+)%-')
end

-- Whether the bytes of body at position at are exactly text: compared where they lie.
local function holds_at(body, at, text)
  if not at or not text or at + #text - 1 > #body then return false end
  return ffi.C.memcmp(ffi.cast("const char *", body) + (at - 1), text, #text) == 0
end

-- A compact columns answer checked in place: its "keys" and "predictions" arrays compared
-- byte for byte with the expected ones (a JSON array ends at its own closing bracket, so
-- text that starts where the array does and equals the whole expected array is that array).
-- Checking builds no string: building the signature (a copy of the answer's arrays, and the
-- keys again in the concatenation) cost a 10,000-key answer twice an unkeyed one's wrk CPU,
-- on the critical path of a one-connection load. Returns whether it matches, and the body
-- index; nil where the answer is not compact (then the signature is built and compared).
local function columns_match(body, headers)
  if not compact then return nil end
  local index, from = nil, 1
  if format == "columns" then
    local at = string.find(body, '"keys":[', 1, true)
    if not at then return false, nil end
    index = tonumber(string.match(body, '^%["b(%d+)%-', at + 7))
    local keys = index and expected_keys[index + 1]
    if not holds_at(body, at + 7, keys) then return false, index end
    from = at + 7 + #keys
  else  -- columns_unkeyed: the body told by the echoed X-Request-ID
    local id = headers["x-request-id"] or headers["X-Request-ID"] or ""
    index = tonumber(string.match(id, "b(%d+)"))
  end
  local at = string.find(body, '"predictions":[', from, true)
  local predictions = index and expected_predictions[index + 1]
  return at ~= nil and holds_at(body, at + 14, predictions), index
end

local function signature(body, headers)
  local index
  if format == "rows" then
    -- key=prediction;... built in one concat (a string per row cost wrk's CPU, which
    -- shares the server's two cores: more for an answer with keys than for one without).
    local parts, n = {}, 0
    for key, prediction in string.gmatch(body, '"key":(.-),"prediction":(.-)[,}]') do
      parts[n + 1], parts[n + 2], parts[n + 3], parts[n + 4] = key, "=", prediction, ";"
      n = n + 4
      index = index or string.match(key, '"b(%d+)%-')
    end
    return table.concat(parts, "", 1, math.max(n - 1, 0)), index
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
  elseif format == "v2bin" then
    return binary_signature(body, headers)
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
  local finished = now_us()
  local id = headers["x-request-id"] or headers["X-Request-ID"]
  local sent = id and started[id]
  if sent then
    started[id] = nil
    started_count = started_count - 1
  end
  if status ~= 200 then
    failed = failed + 1
    statuses[tostring(status)] = (statuses[tostring(status)] or 0) + 1
    return
  end
  local matched, index
  if format == "columns" or format == "columns_unkeyed" then
    matched, index = columns_match(body, headers)
  end
  if matched == nil then
    local sig
    sig, index = signature(body, headers)
    matched = index ~= nil and expected[tonumber(index) + 1] == sig
  end
  if matched then
    checked = checked + 1
    if sent then
      local bucket = math.floor((finished - sent) / 100)
      latency_200[bucket] = (latency_200[bucket] or 0) + 1
      latency_200_count = latency_200_count + 1
    end
  else
    mismatched = mismatched + 1
  end
end

local function percentile_ms(histogram, count, q)
  if count == 0 then return 0 end
  local buckets = {}
  for bucket in pairs(histogram) do buckets[#buckets + 1] = bucket end
  table.sort(buckets)
  local rank, seen = math.ceil(q / 100 * count), 0
  for _, bucket in ipairs(buckets) do
    seen = seen + histogram[bucket]
    if seen >= rank then return (bucket + 1) / 10 end  -- the bucket's upper edge
  end
  return (buckets[#buckets] + 1) / 10
end

function done(summary, latency, requests)
  local c, m, f, by_status, histogram, n200 = 0, 0, 0, {}, {}, 0
  for _, thread in ipairs(threads) do
    c = c + thread:get("checked")
    m = m + thread:get("mismatched")
    f = f + thread:get("failed")
    for status, n in pairs(thread:get("statuses")) do
      by_status[status] = (by_status[status] or 0) + n
    end
    for bucket, n in pairs(thread:get("latency_200")) do
      histogram[bucket] = (histogram[bucket] or 0) + n
    end
    n200 = n200 + thread:get("latency_200_count")
  end
  local s = ""
  for status, n in pairs(by_status) do s = s .. status .. ":" .. n .. " " end
  local e = summary.errors
  local out = io.open(os.getenv("WRK_SUMMARY"), "w")
  out:write(string.format(
    '{"requests": %d, "duration_s": %.3f, "p50_ms": %.2f, "p90_ms": %.2f, "p99_ms": %.2f, ' ..
    '"max_ms": %.2f, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"timeouts": %d, "checked": %d, "mismatched": %d, "failed": %d, "statuses": "%s", ' ..
    '"latency_200_count": %d, "p50_200_ms": %.1f, "p99_200_ms": %.1f}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    e.connect, e.read, e.write, e.timeout, c, m, f, s,
    n200, percentile_ms(histogram, n200, 50), percentile_ms(histogram, n200, 99)))
  out:close()
end
