-- The host given a SIGTERM or SIGINT while its script computes and never
-- gets back to the runtime: the signals reach only the host's signal
-- thread, so the process used to run on for ever (only SIGKILL ended it).
-- It ends with status 3 (a late shutdown) once the shutdown's time and a
-- grace time (5 s) have passed, the cluster's on_shutdown handlers having run.
local W = require("support.wait")

local describe, it, assert, setup = describe, it, assert, setup
local _ENV = _G

local HOST = W.host_binary()

local function alive(pid)
  local _, _, code = os.execute("kill -0 " .. pid .. " 2>/dev/null")
  return code == 0
end

describe("isolate-cluster with a script that never returns", function()
  setup(function()
    assert(HOST, "isolate-cluster is not built (set IC_HOST_BIN or build into build/)")
  end)

  for _, sig in ipairs({ "TERM", "INT" }) do
    it("exits with status 3 after SIG" .. sig .. ", having run the on_shutdown handlers", function()
      local script, out, mark, pidf, st = os.tmpname(), os.tmpname(), os.tmpname(), os.tmpname(), os.tmpname()
      os.remove(mark)
      os.remove(st)
      W.write_file(script, ([[
        cluster:spawn_isolate(function(ctx)
          ctx:on_shutdown(function() print("on_shutdown ran") end)
          local f = io.open(%q, "w") f:write("up") f:close()
        end)
        while true do end
      ]]):format(mark))
      os.execute(("(%s --shutdown-timeout 1 %s > %s 2>&1 & echo $! > %s; wait $!; echo $? > %s) >/dev/null 2>&1 &")
        :format(HOST, script, out, pidf, st))
      local pid = W.wait_until(function() return tonumber(W.read_file(pidf):match("%d+")) end, 30)
      assert.is_not_nil(pid)
      assert.truthy(W.wait_until(function() return W.read_file(mark) == "up" end, 30), "the isolate never came up")
      os.execute("kill -" .. sig .. " " .. pid)
      local status = W.wait_until(function() return tonumber(W.read_file(st):match("%d+")) end, 30)
      if not status and alive(pid) then os.execute("kill -9 " .. pid) end
      local text = W.read_file(out)
      for _, f in ipairs({ script, out, mark, pidf, st }) do os.remove(f) end
      assert.equal(3, status, "the host did not exit after SIG" .. sig .. ": " .. text)
      assert.truthy(text:find("on_shutdown ran", 1, true), text)
      assert.truthy(text:find("did not return", 1, true), text)
    end)
  end
end)
