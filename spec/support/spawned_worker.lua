-- A module whose entry function the multi-node specs spawn on another node
-- by name (spawn_isolate("support.spawned_worker", props, {node = ...})).
-- Requests: "who" -> {node = <its node>, props = <its properties>};
-- "crash" raises; anything else is echoed.
return function(context)
  context:on_message(function(msg)
    if msg == "who" then return { node = context.isolate_ref.node, props = context:properties() } end
    if msg == "crash" then error("crashed on request") end
    return msg
  end)
end
