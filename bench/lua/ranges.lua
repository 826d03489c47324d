-- Byte ranges: every request asks for RANGE-BYTES at a random offset inside a random
-- object from the list (objects smaller than the range are fetched whole with the
-- range clipped, as a player would). Offsets are multiples of ALIGN bytes (1 = any).
-- Arguments (after wrk's "--"): LIST-FILE RANGE-BYTES [ALIGN]
-- Used by W2 (64 KiB inside segments) and W3 (1 MiB inside renditions).

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local common = require("common")

local paths, sizes, span, align
local headers = {}

setup = common.setup

function init(args)
   common.seed()
   paths, sizes = common.read_list(args[1])
   span = tonumber(args[2])
   align = tonumber(args[3] or "1")
end

function request()
   local i = math.random(#paths)
   local size = sizes[i]
   local len = math.min(span, size)
   local slots = math.floor((size - len) / align)
   local first = math.random(0, slots) * align
   headers["Range"] = string.format("bytes=%d-%d", first, first + len - 1)
   return wrk.format("GET", paths[i], headers)
end

done = common.done
