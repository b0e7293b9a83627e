-- SPEC §5 opts.tls: nodes that reach their NATS server over TLS, against a
-- real nats-server with a certificate made here (openssl, a throwaway CA).
local MN = require("support.multinode")
local H = MN.H
local ic = require("isolate_cluster")

local describe, it, assert, setup, after_each, teardown, pending = describe, it, assert, setup, after_each, teardown,
  pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

local function sh(cmd)
  local ok = os.execute(cmd .. " >/dev/null 2>&1")
  assert(ok, "failed: " .. cmd)
end

describe("multi-node over TLS", function()
  local dir
  setup(function()
    assert(os.execute("command -v openssl >/dev/null 2>&1"), "these specs need the openssl command")
  end)
  after_each(H.cleanup)
  teardown(H.cleanup)

  local function certificates()
    dir = H.tmpdir()
    local q = H.quote
    sh(("cd %s && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=ic-test-ca"):format(q(dir)))
    sh(("cd %s && openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1"):format(q(dir)))
    local f = assert(io.open(dir .. "/ext.cnf", "w"))
    f:write("subjectAltName=IP:127.0.0.1\n")
    f:close()
    sh(("cd %s && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile ext.cnf"):format(q(dir)))
    return dir
  end

  it("nodes with tls = {ca = ...} join and talk; a node without TLS cannot connect", function()
    local d = certificates()
    local srv = H.start_server({ config = ("tls {\n  cert_file: %q\n  key_file: %q\n  ca_file: %q\n  timeout: 2\n}"):format(
      d .. "/server.pem", d .. "/server.key", d .. "/ca.pem") })
    local url = "tls://127.0.0.1:" .. srv.port
    local name = H.unique_name("tls")
    local a <close> = ic.node({ nats = url, cluster = name, name = "a", workers = 1, tls = { ca = d .. "/ca.pem" } })
    local b <close> = ic.node({ nats = url, cluster = name, name = "b", workers = 1, tls = { ca = d .. "/ca.pem" } })
    b:spawn_isolate(function(context)
      context:on_message(function(m) return { m, context.isolate_ref.node } end)
    end, nil, { path = "/tls/echo" })
    local echo = assert(a:lookup_isolate("/tls/echo", 10))
    assert.same({ "over tls", "b" }, echo:request("over tls", 10))
    local ok, err = pcall(ic.node, { nats = "nats://127.0.0.1:" .. srv.port, cluster = name, name = "plain",
      connect_timeout = 2 })
    assert.is_false(ok)
    assert.matches("cannot create the node: cannot connect to NATS", err)
    local okx, errx = pcall(ic.node, { nats = url, cluster = name, name = "x", tls = { cer = "x" } })
    assert.is_false(okx)
    assert.matches('node (opts.tls): unknown option "cer"', errx, 1, true)
  end)
end)
