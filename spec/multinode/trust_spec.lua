-- SPEC §5 "optional: user, password, token, tls = { ca =, cert =, key = }"
-- (authentication enforced by the NATS server, configured the safe way: users
-- inside a named account, no `authorization` block, see
-- support.nats.auth_config; TLS with client certificates) and "Trust: ... Lua
-- bytecode from another node is refused unless `allow_code = true` and the
-- traffic is authenticated with `secret`".
local MN = require("support.multinode")
local H, W = MN.H, MN.W

local describe, it, assert, setup, teardown, after_each, pending =
  describe, it, assert, setup, teardown, after_each, pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

-- Tries to join srv with extra options, which must fail in a bounded time
-- (ic.node may raise or return nil, err); returns the error, which must say why.
local function join_error(srv, extra)
  local t0 = W.now()
  local ok, c, err = pcall(MN.node, srv, H.unique_name("refused"), "spec", extra)
  assert.is_true(W.now() - t0 < 30, "a refused connection took too long to report")
  assert.is_false(ok and c ~= nil, "joined although it should not have")
  return tostring(ok and err or c)
end

describe("authentication", function()
  local srv
  setup(function()
    srv = H.start_server({ config = H.auth_config({ { user = "node", password = "s3cret" } }) })
  end)
  after_each(function() MN.cleanup({ srv }) end)
  teardown(function() MN.cleanup() end)

  it("without credentials a node cannot join, and the error says authorization", function()
    assert.matches("[Aa]uthoriz", join_error(srv))
  end)

  it("with a wrong password a node cannot join", function()
    assert.matches("[Aa]uthoriz", join_error(srv, { user = "node", password = "wrong" }))
  end)

  it("with an unknown user a node cannot join", function()
    assert.matches("[Aa]uthoriz", join_error(srv, { user = "nobody", password = "s3cret" }))
  end)

  it("a node program without credentials reports the error and exits", function()
    local p = H.start_node({ script = "echo", args = MN.args(srv, H.unique_name("auth"), "b") })
    local line = H.wait_output(p, "^node error: ", 30)
    assert.matches("[Aa]uthoriz", line)
    assert.equal(3, p:wait(15))
  end)

  it("with the right user and password nodes join and talk", function()
    local name = H.unique_name("auth")
    local creds = { user = "node", password = "s3cret" }
    local c = MN.node(srv, name, "spec", creds)
    MN.start(srv, name, "b", creds)
    local echo = c:lookup_isolate("/echo", 15)
    assert.is_not_nil(echo)
    assert.equal("authenticated", echo:request("authenticated", 10))
  end)

  it("credentials in the URL work too", function()
    local name = H.unique_name("auth")
    local url = srv.url:gsub("^nats://", "nats://node:s3cret@")
    local c = MN.node(url, name, "spec")
    assert.equal("spec", c.node)
  end)
end)

describe("token authentication", function()
  local srv
  -- A token lives in an `authorization` block; without an `accounts` block
  -- and system account beside it, CVE-2023-47090 does not apply.
  setup(function() srv = H.start_server({ config = 'authorization { token: "t0k-en" }' }) end)
  after_each(function() MN.cleanup({ srv }) end)
  teardown(function() MN.cleanup() end)

  it("with the right token nodes join and talk; without it or with another they cannot", function()
    local name = H.unique_name("token")
    local c = MN.node(srv, name, "spec", { token = "t0k-en" })
    MN.start(srv, name, "b", { token = "t0k-en" })
    assert.equal("token", c:lookup_isolate("/echo", 15):request("token", 10))
    for _, extra in ipairs({ {}, { token = "wrong" } }) do
      local ok, c2, err = pcall(MN.node, srv, name, "intruder", extra)
      assert.is_false(ok and c2 ~= nil, "joined with token " .. tostring(extra.token))
      assert.matches("[Aa]uthoriz", tostring(ok and err or c2))
    end
  end)
end)

describe("TLS (tls = { ca =, cert =, key = })", function()
  local files, srv
  setup(function()
    files = H.tls_files()
    srv = H.start_server({ config = H.tls_config(files, true) }) -- client certificates required
  end)
  after_each(function() MN.cleanup({ srv, files.dir }) end)
  teardown(function() MN.cleanup() end)

  it("with the CA and a client certificate nodes join a server that verifies clients, and talk", function()
    local name = H.unique_name("tls")
    local c = MN.node(srv, name, "spec", { tls = { ca = files.ca, cert = files.client_cert, key = files.client_key } })
    MN.start(srv, name, "b", { tls_ca = files.ca, tls_cert = files.client_cert, tls_key = files.client_key })
    local echo = c:lookup_isolate("/echo", 15)
    assert.is_not_nil(echo)
    assert.equal("over tls", echo:request("over tls", 10))
  end)

  it("without tls a node cannot join a server that requires it", function()
    assert.is_string(join_error(srv))
  end)

  it("without a client certificate a node cannot join a server that verifies clients", function()
    assert.is_string(join_error(srv, { tls = { ca = files.ca } }))
  end)

  it("a node refuses a server whose certificate its CA did not sign", function()
    local tls = { ca = files.other_ca, cert = files.client_cert, key = files.client_key }
    assert.is_string(join_error(srv, { tls = tls }))
  end)

  it("a missing certificate file is a clear error", function()
    local err = join_error(srv, { tls = { ca = files.dir .. "/no-such-ca.pem" } })
    assert.matches("no%-such%-ca%.pem", err)
  end)
end)

describe("Lua functions from another node", function()
  local srv
  setup(function() srv = H.start_server() end)
  after_each(function() MN.cleanup({ srv }) end)
  teardown(function() MN.cleanup() end)

  -- Node b runs /echo with b_opts; this node joins with my_opts. Then asks b's
  -- /echo to run a function sent in the message. Returns ok, result, b's
  -- process. wait: how long to look for b's /echo (default 10 s; a pair that
  -- cannot meet waits it out, so such a test gives less).
  local function try(my_opts, b_opts, wait)
    local name = H.unique_name("code")
    local c = MN.node(srv, name, "spec", my_opts)
    local b = MN.start(srv, name, "b", b_opts)
    local echo = c:lookup_isolate("/echo", wait or 10)
    if not echo then return false, "not visible", b end
    local ok, res = pcall(echo.request, echo, { op = "run", fn = function() return 6 * 7 end }, 10)
    return ok, res, b, echo
  end

  local function assert_refused(ok, res, b, echo)
    assert.is_false(ok and res == 42, "the function ran")
    assert.is_nil(b:output():find("ran function", 1, true), "node b ran a function from another node")
    if echo then
      -- plain messages still work, and b never ran anything
      assert.equal(0, echo:request({ op = "ran" }, 10))
      assert.equal("plain", echo:request("plain", 10))
    end
  end

  it("are refused by default (no allow_code, no secret)", function()
    assert_refused(try(nil, nil))
  end)

  it("are refused when both nodes share a secret but the receiver has no allow_code", function()
    assert_refused(try({ secret = "k" }, { secret = "k" }))
  end)

  it("are refused with allow_code but without a secret (or such a node cannot start)", function()
    local name = H.unique_name("code")
    local c = MN.node(srv, name, "spec")
    local b = H.start_node({ script = "echo", args = MN.args(srv, name, "b", { allow_code = "true" }) })
    assert.truthy(H.poll(function()
      local out = b:output()
      return out:find("node error:", 1, true) or out:find("ready b", 1, true)
    end, 30), b:output())
    local refused = b:output():match("node error: [^\n]*")
    if refused then
      assert.matches("secret", refused)
      return
    end
    local echo = c:lookup_isolate("/echo", 10)
    assert.is_not_nil(echo)
    local ok, res = pcall(echo.request, echo, { op = "run", fn = function() return 42 end }, 10)
    assert_refused(ok, res, b, echo)
  end)

  it("are refused from a node with another secret, even when the receiver allows code", function()
    -- b has printed "ready": had it joined, its /echo would be here well within 3 s
    local ok, res, b = try({ secret = "not-the-key", allow_code = true }, { secret = "the-key", allow_code = "true" }, 3)
    assert.is_false(ok and res == 42, "the function ran")
    assert.is_nil(b:output():find("ran function", 1, true), "node b ran a function from an unauthenticated node")
  end)

  it("are accepted with allow_code and the same secret on both nodes", function()
    local ok, res, _, echo = try({ secret = "the-key", allow_code = true }, { secret = "the-key", allow_code = "true" })
    assert.is_true(ok, tostring(res))
    assert.equal(42, res)
    assert.equal(1, echo:request({ op = "ran" }, 10))
  end)

  it("with allow_code and the secret, a Lua function entry can be spawned on the other node", function()
    local name = H.unique_name("code")
    local c = MN.node(srv, name, "spec", { secret = "k2", allow_code = true })
    MN.start(srv, name, "b", { secret = "k2", allow_code = "true" })
    assert.is_not_nil(c:lookup_isolate("/ctl/b", 10))
    local ref = c:spawn_isolate(function(context)
      context:on_message(function(m) return { m = m, node = context.isolate_ref.node } end)
    end, nil, { node = "b" })
    assert.same({ m = "hi", node = "b" }, ref:request("hi", 10))
  end)
end)
