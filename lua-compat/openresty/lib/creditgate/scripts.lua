-- creditgate.scripts: the canonical Redis scripts of `lua-compat/lua/`, read from those very
-- files (never copies) and sent as creditgate-gateway sends them: `prelude.lua`, a newline,
-- the script's body; called with EVALSHA, loaded again on NOSCRIPT. Reads files once, at
-- configure time.
local digest = require("creditgate.digest")

local _M = {}

local NAMES = { "reserve", "settle", "void" }

local function read(path)
    local file, err = io.open(path, "rb")
    if not file then
        return nil, "creditgate: scripts_dir: cannot read " .. path .. ": " .. tostring(err)
    end
    local text = file:read("*a")
    file:close()
    return text
end

-- { reserve = { source, sha }, ... } from `dir` (the repository's `lua-compat/lua`).
function _M.load(dir)
    local prelude, err = read(dir .. "/prelude.lua")
    if not prelude then return nil, err end
    local scripts = {}
    for _, name in ipairs(NAMES) do
        local body, berr = read(dir .. "/" .. name .. ".lua")
        if not body then return nil, berr end
        local source = prelude .. "\n" .. body
        scripts[name] = { name = name, source = source, sha = digest.sha1_hex(source) }
    end
    return scripts
end

-- Runs `script` on the connection `red` with `keys` and `args`; on NOSCRIPT loads it and
-- retries once. Returns the reply array, or nil and the error.
function _M.call(red, script, keys, args)
    local argv = { script.sha, #keys }
    for _, key in ipairs(keys) do argv[#argv + 1] = key end
    for _, arg in ipairs(args) do argv[#argv + 1] = arg end
    local reply, err = red:evalsha(unpack(argv))
    if not reply and err and err:find("NOSCRIPT", 1, true) then
        local _, lerr = red:script("load", script.source)
        if lerr then return nil, lerr end
        reply, err = red:evalsha(unpack(argv))
    end
    return reply, err
end

return _M
