-- Shared helpers for the `oca bench serve` workloads (loaded by the workload scripts).
--
-- Path lists are text files with one "URL-path<TAB>size-in-bytes" line per object.
-- done() prints one machine-readable line that bench/wrk.py parses; wrk's own
-- latency statistics are aggregated over the run, in microseconds.

local common = {}

function common.read_list(file)
   local paths, sizes = {}, {}
   for line in io.lines(file) do
      local path, size = line:match("^(%S+)\t(%d+)$")
      if path then
         paths[#paths + 1] = path
         sizes[#sizes + 1] = tonumber(size)
      end
   end
   if #paths == 0 then
      error("no objects listed in " .. file)
   end
   return paths, sizes
end

local counter = 0

-- Give every thread its own random stream.
function common.setup(thread)
   counter = counter + 1
   thread:set("thread_id", counter)
end

function common.seed()
   local id = thread_id or 0
   math.randomseed(os.time() * 1000 + id * 7919 + math.floor(os.clock() * 1e6) % 1000)
   -- The first values after seeding are poorly mixed in some Lua versions.
   for _ = 1, 10 do
      math.random()
   end
end

function common.done(summary, latency, requests)
   local e = summary.errors
   local mean = 0
   if summary.requests > 0 then
      mean = latency.mean
   end
   io.write(string.format(
      "OCA-BENCH-RESULT {\"duration_us\":%d,\"requests\":%d,\"bytes\":%d," ..
      "\"errors\":{\"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d}," ..
      "\"latency_us\":{\"p50\":%d,\"p90\":%d,\"p99\":%d,\"max\":%d,\"mean\":%.1f}}\n",
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, mean))
end

return common
