-- LuaRocks package of the creditgate Kong plugin and the OpenResty module it wraps.
package = "creditgate"
version = "0.1.0-1"
source = { url = "git+https://example.invalid/creditgate.git" }
description = {
    summary = "Prepaid credit enforcement for Kong, on creditgate's Redis protocol",
    license = "Apache-2.0",
}
dependencies = { "lua >= 5.1", "lua-resty-redis", "lua-cjson" }
build = {
    type = "builtin",
    modules = {
        ["kong.plugins.creditgate.handler"] = "kong/plugins/creditgate/handler.lua",
        ["kong.plugins.creditgate.schema"] = "kong/plugins/creditgate/schema.lua",
        ["creditgate"] = "openresty/lib/creditgate/init.lua",
        ["creditgate.control"] = "openresty/lib/creditgate/control.lua",
        ["creditgate.cost"] = "openresty/lib/creditgate/cost.lua",
        ["creditgate.digest"] = "openresty/lib/creditgate/digest.lua",
        ["creditgate.hold"] = "openresty/lib/creditgate/hold.lua",
        ["creditgate.identity"] = "openresty/lib/creditgate/identity.lua",
        ["creditgate.keyed"] = "openresty/lib/creditgate/keyed.lua",
        ["creditgate.pricing"] = "openresty/lib/creditgate/pricing.lua",
        ["creditgate.responses"] = "openresty/lib/creditgate/responses.lua",
        ["creditgate.scripts"] = "openresty/lib/creditgate/scripts.lua",
        ["creditgate.store"] = "openresty/lib/creditgate/store.lua",
        ["creditgate.usage"] = "openresty/lib/creditgate/usage.lua",
    },
}
