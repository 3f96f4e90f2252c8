-- wrk script: WORK-REQUESTs from PNP_COUNT devices named PNP_PREFIX + 5-digit index from PNP_FIRST, in turn.
local prefix = os.getenv("PNP_PREFIX") or "BENCH"
local first = tonumber(os.getenv("PNP_FIRST") or "0")
local count = tonumber(os.getenv("PNP_COUNT") or "1")
local counter = 0
local headers = { ["Content-Type"] = "text/xml" }

function setup(thread)
  thread:set("offset", math.random(0, count - 1))
end

request = function()
  counter = counter + 1
  local serial = string.format("%s%05d", prefix, first + (counter + (offset or 0)) % count)
  local udi = "PID:C9300-24P,VID:V01,SN:" .. serial
  local body = '<?xml version="1.0" encoding="UTF-8"?><pnp xmlns="urn:cisco:pnp" version="1.0" udi="' .. udi ..
    '"><info xmlns="urn:cisco:pnp:work-info" correlator="CiscoPnP-1.0-' .. counter .. '"><deviceId><udi>' .. udi ..
    '</udi><hostname>Switch</hostname><authRequired>false</authRequired><viaProxy>false</viaProxy>' ..
    '<securityAdvise>false</securityAdvise></deviceId></info></pnp>'
  return wrk.format("POST", "/pnp/WORK-REQUEST", headers, body)
end

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format('RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    errors.status + errors.connect + errors.read + errors.write + errors.timeout))
end
