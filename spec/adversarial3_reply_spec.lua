-- Answering a request later (context:reply_later, and the reply function
-- context:receive hands out) when the first answer cannot be copied, and
-- after the handler's own error has answered it: a request is answered
-- exactly once, and an answer that raised answered nothing.
local W = require("support.wait")

local describe, it, assert = describe, it, assert
local _ENV = _G
local with_cluster = W.with_cluster

describe("a reply function", function()
  it("that raised for a value it cannot copy may be called again, and that answer arrives", function()
    with_cluster({ workers = 2 }, function(c)
      local d = c:spawn_isolate(function(ctx)
        ctx:on_message(function()
          local reply = ctx:reply_later()
          local ok, err = pcall(reply, io.stdout)
          reply({ first_ok = ok, first_err = tostring(err) })
        end)
      end)
      local r = d:request("go", W.TIMEOUT)
      assert.is_false(r.first_ok)
      assert.truthy(r.first_err:find("cannot copy a userdata", 1, true))
    end)
  end)

  it("from context:receive works the same way", function()
    with_cluster({ workers = 2 }, function(c)
      local d = c:spawn_isolate(function(ctx)
        ctx:on_message(function(m)
          if m ~= "start" then return end
          local _, _, reply = ctx:receive(10)
          local ok = pcall(reply, coroutine.create(print))
          reply("second try, first " .. tostring(ok))
        end)
      end)
      d:send("start")
      assert.equal("second try, first false", d:request("q", W.TIMEOUT))
    end)
  end)

  it("raises once the handler's error has answered the request", function()
    with_cluster({ workers = 2 }, function(c)
      local d = c:spawn_isolate(function(ctx)
        local main = ctx:property("main")
        ctx:on_message(function()
          local reply = ctx:reply_later()
          ctx:after(0, function()
            local ok, err = pcall(reply, "a second answer")
            main:send({ ok = ok, err = tostring(err) })
          end)
          error("handler failed")
        end)
      end, { main = c.main })
      W.error_containing("handler failed", d.request, d, "go", W.TIMEOUT)
      local r = W.receive(c)
      assert.is_table(r)
      assert.is_false(r.ok)
      assert.truthy(r.err:find("already been answered", 1, true))
    end)
  end)
end)
