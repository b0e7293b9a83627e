-- The isolate-cluster host: runs a script as the main state, serves until
-- shutdown, and shuts down gracefully on SIGTERM/SIGINT.
local W = require("support.wait")

local describe, it, assert, setup = describe, it, assert, setup
local _ENV = _G

local HOST = W.host_binary()

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local function read(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

-- Runs the host on a script (with a time limit); returns output and status.
local function host(script, args)
  local file = os.tmpname()
  write(file, script)
  local out = os.tmpname()
  local ok, how, code = os.execute(("timeout 60 %s %s %s > %s 2>&1"):format(HOST, file, args or "", out))
  local text = read(out)
  os.remove(file)
  os.remove(out)
  return text, how == "exit" and code or -1
end

describe("isolate-cluster", function()
  setup(function()
    assert(HOST, "isolate-cluster is not built (set IC_HOST_BIN or build into build/)")
  end)

  it("runs a script with `cluster` and `arg`, and serves until an isolate shuts the cluster down", function()
    local out, status = host([[
      print("args", arg[0] ~= nil, arg[1], arg[2], select("#", ...))
      local r = cluster:spawn_isolate(function(ctx)
        ctx:on_message(function(m)
          print("isolate got " .. m)
          ctx:after(0.05, function() ctx:shutdown_cluster() end)
        end)
      end)
      r:send("hello")
    ]], "one two")
    assert.equal(0, status, out)
    assert.truthy(out:find("args\ttrue\tone\ttwo\t2", 1, true), out)
    assert.truthy(out:find("isolate got hello", 1, true), out)
  end)

  it("exits 1 with the traceback when the script raises", function()
    local out, status = host([[error("boom")]])
    assert.equal(1, status)
    assert.truthy(out:find("boom", 1, true), out)
    assert.truthy(out:find("stack traceback", 1, true), out)
  end)

  it("refuses bad usage with status 2", function()
    local out = os.tmpname()
    local _, _, code = os.execute(HOST .. " --workers zero x.lua > " .. out .. " 2>&1")
    assert.equal(2, code)
    -- --nats without --cluster and --node says what is missing
    _, _, code = os.execute(HOST .. " --nats nats://127.0.0.1:4222 x.lua > " .. out .. " 2>&1")
    assert.equal(2, code)
    assert.truthy(read(out):find("--cluster NAME is missing", 1, true), read(out))
    os.remove(out)
  end)

  for _, sig in ipairs({ "TERM", "INT" }) do
    it("shuts down gracefully on SIG" .. sig .. ", running on_shutdown handlers", function()
      local script, out, mark = os.tmpname(), os.tmpname(), os.tmpname()
      os.remove(mark)
      write(script, ([[
        cluster:spawn_isolate(function(ctx)
          ctx:on_shutdown(function() print("on_shutdown ran") end)
          local f = io.open(%q, "w") f:write("up") f:close()
        end)
      ]]):format(mark))
      local p = io.popen(("%s %s > %s 2>&1 & echo $!"):format(HOST, script, out))
      local pid = tonumber(p:read("l"))
      p:close()
      assert.is_not_nil(pid)
      assert.is_true(W.wait_until(function() return read(mark) == "up" end, 30) and true or false,
        "the isolate never came up")
      os.execute("kill -" .. sig .. " " .. pid)
      local gone = W.wait_until(function()
        local _, _, code = os.execute("kill -0 " .. pid .. " 2>/dev/null")
        return code ~= 0
      end, 30)
      assert.is_truthy(gone, "the host did not exit")
      assert.truthy(read(out):find("on_shutdown ran", 1, true), read(out))
      os.remove(script)
      os.remove(out)
      os.remove(mark)
    end)
  end
end)
