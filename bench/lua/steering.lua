-- Steering decisions: every request asks the service to rank appliances for one title
-- and one client. Arguments (after wrk's "--"): LIST-FILE of "URL-path<TAB>client-IP"
-- lines; the client travels in X-Forwarded-For (the benchmark trusts loopback as a proxy).

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local common = require("common")

local requests_ = {}
local next_ = 0

setup = common.setup

function init(args)
   common.seed()
   for line in io.lines(args[1]) do
      local path, client = line:match("^(%S+)\t(%S+)$")
      if path then
         requests_[#requests_ + 1] = wrk.format("GET", path, { ["X-Forwarded-For"] = client })
      end
   end
   if #requests_ == 0 then
      error("no requests listed in " .. args[1])
   end
   next_ = math.random(#requests_)
end

function request()
   next_ = next_ % #requests_ + 1
   return requests_[next_]
end

done = common.done
