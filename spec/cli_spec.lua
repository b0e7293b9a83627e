-- The isolate-cluster host: runs a script as the main state, serves until
-- shutdown, and shuts down gracefully on SIGTERM/SIGINT.
local W = require("support.wait")

local describe, it, assert, setup, pending = describe, it, assert, setup, pending
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

-- Runs the host with these command-line words (with a time limit, in
-- seconds, and a command prefix such as valgrind's); returns its output
-- and exit status (124: the limit ran out).
local function host_args(words, limit, wrapper)
  local out = os.tmpname()
  local _, how, code = os.execute(("timeout %d %s %s %s > %s 2>&1"):format(limit or 60, wrapper or "", HOST, words,
    out))
  local text = read(out)
  os.remove(out)
  return text, how == "exit" and code or -1
end

-- Runs the host on a script (under `wrapper`, a command prefix, if given);
-- returns output and status.
local function host(script, args, limit, options, wrapper)
  local file = os.tmpname()
  write(file, script)
  local text, code = host_args(("%s %s %s"):format(options or "", file, args or ""), limit, wrapper)
  os.remove(file)
  return text, code
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

  it("exits 1 at once when the script raises while isolates still have timers", function()
    -- Nothing is drained after a script error: a ticking isolate must not hold
    -- the exit back (it used to wait out the 5 s drain). `timeout 4` turns a
    -- stall into status 124 rather than timing the run here.
    local out, status = host([[
      cluster:spawn_isolate(function(ctx) ctx:every(0.1, function() end) end)
      error("boom")
    ]], nil, 4)
    assert.equal(1, status, out)
    assert.truthy(out:find("boom", 1, true), out)
  end)

  -- The host's own threads (signals, --stats) are joined on every way out,
  -- also when its serving code raises after the script ran (here: the
  -- cluster's methods replaced by one that raises): valgrind reports the
  -- stack of a thread left running at exit as "possibly lost". Needs a
  -- build without sanitizers (valgrind cannot run those) and valgrind.
  local can_valgrind = (os.getenv("IC_SANITIZE") or "") == "" and os.execute("command -v valgrind > /dev/null 2>&1")
  local with_valgrind = can_valgrind and it or pending
  with_valgrind("joins its threads when serving raises after the script (valgrind: nothing possibly lost)", function()
    local out, status = host([[
      debug.getmetatable(cluster).__index = function() error("boom") end
    ]], nil, 120, nil, "env -u LD_PRELOAD valgrind -q --leak-check=full "
      .. "--errors-for-leak-kinds=definite,indirect,possible --error-exitcode=99")
    assert.equal(1, status, out)
    assert.truthy(out:find("boom", 1, true), out)
  end)

  it("exits 3 when a SIGTERM shutdown does not finish within --shutdown-timeout", function()
    local script, out, mark, pidf, statusf = os.tmpname(), os.tmpname(), os.tmpname(), os.tmpname(), os.tmpname()
    os.remove(mark)
    os.remove(statusf)
    write(script, ([[
      cluster:spawn_isolate(function(ctx)
        ctx:on_shutdown(function() while true do end end)
        local f = io.open(%q, "w") f:write("up") f:close()
      end)
    ]]):format(mark))
    -- The shell reports the host's exit status; the host's own pid gets the signal.
    os.execute(("sh -c '%s --shutdown-timeout 0.2 %s > %s 2>&1 & echo $! > %s; wait $!; echo $? > %s' &")
      :format(HOST, script, out, pidf, statusf))
    assert.truthy(W.wait_until(function() return read(mark) == "up" end, 30), "the isolate never came up")
    local pid = assert(tonumber(read(pidf)))
    os.execute("kill -TERM " .. pid)
    assert.truthy(W.wait_until(function() return read(statusf) ~= "" end, 30), "the host did not exit")
    assert.equal("3", read(statusf):match("%d+"), read(out))
    for _, f in ipairs({ script, out, mark, pidf, statusf }) do os.remove(f) end
  end)

  it("prints its version and its options", function()
    local out, status = host_args("--version")
    assert.equal(0, status, out)
    assert.truthy(out:match("^isolate%-cluster %d+%.%d+%.%d+"), out)
    out, status = host_args("--help")
    assert.equal(0, status, out)
    for _, flag in ipairs({ "--workers", "--shutdown-timeout", "--version", "--nats" }) do
      assert.truthy(out:find(flag, 1, true), flag .. " missing from --help: " .. out)
    end
  end)

  it("refuses a bad --shutdown-timeout with status 2", function()
    for _, v in ipairs({ "-1", "abc", "nan", "" }) do
      local out, status = host_args("--shutdown-timeout '" .. v .. "' x.lua")
      assert.equal(2, status, v .. ": " .. out)
      assert.truthy(out:find("--shutdown-timeout", 1, true), out)
    end
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

  it("exits 2 when the script file cannot be read, before any cluster starts", function()
    local missing = os.tmpname()
    os.remove(missing)
    local out, status = host_args(missing .. ".lua")
    assert.equal(2, status, out)
    assert.truthy(out:find("cannot open " .. missing .. ".lua", 1, true), out)
    -- a directory cannot be read as a script either; and no node joins
    -- (the NATS URL names no server: a start would fail differently)
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. dir))
    out, status = host_args("--nats nats://127.0.0.1:1 --cluster c --node n " .. dir)
    os.execute("rmdir " .. dir)
    assert.equal(2, status, out)
    assert.truthy(out:find("cannot read " .. dir, 1, true), out)
  end)

  it("exits 1 when the script does not compile, before any cluster starts", function()
    local out, status = host("this is not lua", nil, nil, "--nats nats://127.0.0.1:1 --cluster c --node n")
    assert.equal(1, status, out)
    assert.truthy(out:find("syntax error", 1, true), out)
    assert.falsy(out:find("nats", 1, true), out)
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
