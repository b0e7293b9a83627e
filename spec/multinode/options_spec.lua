-- ic.node's options (SPEC §5) read through a metatable: an __index may make
-- each value afresh (the table holds none of them) and run the collector
-- while the next one is read; every string still lives while the node is
-- created. Long strings are not interned by Lua, so a string nobody holds
-- is freed by a collection (under ASan, a use after that is a crash).
local MN = require("support.multinode")
local H = MN.H

local describe, it, assert, after_each, pending = describe, it, assert, after_each, pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

describe("ic.node options", function()
  after_each(function() MN.cleanup() end)

  it("made by an __index that collects garbage are used as given", function()
    local srv = H.start_server()
    local ic = require("isolate_cluster")
    local cluster_name = (H.unique_name("gc") .. string.rep("c", 64)):sub(1, 60)
    local node_name = "n" .. string.rep("x", 50)
    local function fresh(s) return (s .. "."):sub(1, -2) end -- a new string, held by nobody else
    local opts = setmetatable({}, { __index = function(_, k)
      collectgarbage("collect")
      if k == "nats" then return fresh(srv.url) end
      if k == "cluster" then return fresh(cluster_name) end
      if k == "name" then return fresh(node_name) end
      if k == "connect_timeout" then return 5 end
      if k == "workers" then return 2 end
      return nil
    end })
    local c = ic.node(opts)
    assert.equal(node_name, c.node)
    assert.same({ node_name }, c:nodes())
    -- and it is a working node of that cluster: a peer of the same cluster meets it
    local b = MN.start(srv, cluster_name, "b")
    assert.is_not_nil(MN.lookup_until(c, "/echo", nil, 15), "the peer's isolate never showed")
    assert.same({ "b", node_name }, c:nodes())
    assert.is_true(c:shutdown(10))
    assert.is_true(b:alive())
  end)
end)
