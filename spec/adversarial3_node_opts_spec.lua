-- ic.node's options read the way every other options table is: strings with
-- a NUL byte are refused rather than cut at it, flags are booleans, and
-- values an __index function makes up stay alive while they are used (the
-- module read them, dropped them, and used the freed strings). No NATS
-- server is needed: every case fails before or at the connect, to a port
-- nothing listens on.
local ic = require("isolate_cluster")
local W = require("support.wait")

local describe, it, assert = describe, it, assert
local _ENV = _G
local error_containing, error_of = W.error_containing, W.error_of

local NOWHERE = "nats://127.0.0.1:1"

describe("ic.node options", function()
  it("refuse a NUL byte in a name rather than using the part before it", function()
    error_containing("opts.name cannot contain a NUL byte", ic.node,
      { nats = NOWHERE, cluster = "adv", name = "a\0b", connect_timeout = 0.2 })
    error_containing("opts.cluster cannot contain a NUL byte", ic.node,
      { nats = NOWHERE, cluster = "adv\0x", name = "a", connect_timeout = 0.2 })
    error_containing("opts.nats[1] cannot contain a NUL byte", ic.node,
      { nats = { NOWHERE .. "\0x" }, cluster = "adv", name = "a", connect_timeout = 0.2 })
  end)

  it("take allow_code as a boolean only", function()
    error_containing("node: opts.allow_code must be a boolean, got string", ic.node,
      { nats = NOWHERE, cluster = "adv", name = "a", allow_code = "yes", secret = "s", connect_timeout = 0.2 })
  end)

  it("keep strings an __index function makes up alive while they are used", function()
    -- Each read collects garbage and answers a string made just then, kept
    -- by nothing else: one read after another frees what the read before
    -- made, unless the module keeps it.
    local made = { cluster = "adv", name = "node-x", user = "u", password = "p", nats = NOWHERE .. "/" }
    local n = 0
    local opts = setmetatable({}, {
      __index = function(_, k)
        collectgarbage()
        n = n + 1
        if made[k] then return made[k] .. n end -- a new string, no one else's
        if k == "connect_timeout" then return 0.2 end
      end,
    })
    for _ = 1, 3 do
      local err = error_of(ic.node, opts)
      assert.truthy(err:find("cannot connect to NATS", 1, true), err)
    end
  end)
end)

describe("spawn_isolate's opts.node", function()
  it("refuses a NUL byte rather than spawning on the node named by the part before it", function()
    W.with_cluster({ workers = 1 }, function(c)
      error_containing("spawn_isolate: opts.node cannot contain a NUL byte", c.spawn_isolate, c, "m", nil,
        { node = "a\0b" })
    end)
  end)
end)
