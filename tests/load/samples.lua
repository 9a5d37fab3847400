-- samples.lua -- wrk script: POST /v1/samples to ddm-router, count every
-- response that is not 200 as an error, and print one summary line for
-- tests/load/run.sh:
--   wrk -t2 -c64 -d60s --timeout 60s -s tests/load/samples.lua http://127.0.0.1:8080
-- Environment: DDM_LOAD_BODY (the JSON request, default 1 image, 50 steps,
-- top-2) and DDM_LOAD_IMAGES (images per request, for images/s; default: the
-- body's "n", else 1).
local body = os.getenv("DDM_LOAD_BODY") or '{"n": 1, "steps": 50, "strategy": "top-2"}'
local images = tonumber(os.getenv("DDM_LOAD_IMAGES") or "") or
               tonumber(string.match(body, '"n"%s*:%s*(%d+)') or "1")

wrk.method = "POST"
wrk.path = "/v1/samples"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
   thread:set("id", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   bad = 0          -- responses with a status other than 200
   first_bad = ""
end

function response(status, headers, resp_body)
   if status ~= 200 then
      bad = bad + 1
      if first_bad == "" then
         first_bad = status .. " " .. string.sub(resp_body or "", 1, 160)
      end
   end
end

function done(summary, latency, requests)
   local bad_total, first = 0, ""
   for _, t in ipairs(threads) do
      bad_total = bad_total + t:get("bad")
      if first == "" then first = t:get("first_bad") end
   end
   local e = summary.errors
   -- wrk's own "status" errors are >= 400; ours also catch any non-200
   local errors = bad_total + e.connect + e.read + e.write + e.timeout
   local secs = summary.duration / 1e6
   local ok = summary.requests - bad_total
   io.write(string.format(
      "DDM_LOAD requests=%d ok=%d errors=%d connect=%d read=%d write=%d timeout=%d non200=%d " ..
      "seconds=%.2f requests_per_s=%.2f images_per_s=%.2f " ..
      "p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f mean_ms=%.2f\n",
      summary.requests, ok, errors, e.connect, e.read, e.write, e.timeout, bad_total,
      secs, summary.requests / secs, ok * images / secs,
      latency:percentile(50) / 1000, latency:percentile(90) / 1000,
      latency:percentile(99) / 1000, latency.max / 1000, latency.mean / 1000))
   if first ~= "" then
      io.write("DDM_LOAD first_error=" .. first .. "\n")
   end
end
