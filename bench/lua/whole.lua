-- Whole objects: every request fetches one object, chosen at random from a list.
-- Arguments (after wrk's "--"): LIST-FILE
-- Used by W1 (segments), W4 (segments over HTTPS) and W5 (hot and cold sets).

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local common = require("common")

local requests_ = {}

setup = common.setup

function init(args)
   common.seed()
   local paths = common.read_list(args[1])
   for i, path in ipairs(paths) do
      requests_[i] = wrk.format("GET", path)
   end
end

function request()
   return requests_[math.random(#requests_)]
end

done = common.done
