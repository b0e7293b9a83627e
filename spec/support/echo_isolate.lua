-- An entry function given by module name: cluster:spawn_isolate("support.echo_isolate").
-- The isolate inherits package.path from its creator (spec/?.lua is on it when
-- the specs run), so require() finds this file there too.
-- It answers every request with "<prefix><msg>" (prefix: property, default "echo: ").
return function(ctx)
  local prefix = ctx:property("prefix") or "echo: "
  ctx:on_message(function(msg)
    return prefix .. tostring(msg)
  end)
end
