-- creditgate.digest: SHA-256 (hex and raw) through the OpenSSL libcrypto nginx already
-- links, for API key hashes, idempotency fingerprints and rollout buckets. No I/O.
local ffi = require("ffi")

ffi.cdef([[
unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);
]])

local _M = {}

local out = ffi.new("unsigned char[32]")

-- The 32-byte SHA-256 of `text`, as a Lua string.
function _M.sha256(text)
    ffi.C.SHA256(text, #text, out)
    return ffi.string(out, 32)
end

local HEX = {}
for byte = 0, 255 do HEX[byte] = string.format("%02x", byte) end

local function hex(raw)
    local out = {}
    for i = 1, #raw do out[i] = HEX[raw:byte(i)] end
    return table.concat(out)
end

-- The SHA-256 of `text` as 64 lower-case hex digits (what `sha256sum` prints).
function _M.sha256_hex(text)
    return hex(_M.sha256(text))
end

-- The SHA-1 of `text` as 40 hex digits: the name `EVALSHA` knows a script by.
function _M.sha1_hex(text)
    return hex(ngx.sha1_bin(text))
end

return _M
