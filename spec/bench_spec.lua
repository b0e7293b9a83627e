-- bench/bench.lua's options that the benchmark smoke run (--quick, the
-- whole set) does not cover: --peers on a machine without Erlang says so
-- once and runs our figures all the same.
local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

describe("bench/bench.lua --peers", function()
  it("without erl on PATH, says so once and runs the benchmark", function()
    -- The interpreter and `timeout` are found before PATH loses them.
    local cmd = table.concat({
      "L=$(command -v lua5.4) && T=$(command -v timeout) &&",
      "LUA_PATH=" .. q(package.path), "LUA_CPATH=" .. q(package.cpath), "PATH=/nonexistent",
      '"$T" 60 "$L" bench/bench.lua --only pingpong --n 10 --peers 2>&1;',
      'echo "@@exit=$?"',
    }, " ")
    local p = assert(io.popen(cmd, "r"))
    local out = p:read("a")
    p:close()
    assert.are.equal("0", out:match("@@exit=(%d+)%s*$"), out)
    local _, notes = out:gsub("erl not found on PATH", "")
    assert.are.equal(1, notes, out)
    assert.is_truthy(out:find("ping%-pong round trips/s%s+[%d.]+ rt/s"), out)
    assert.is_falsy(out:find("\n  Erlang"), out)
  end)
end)
