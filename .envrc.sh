B=${B:-build-rel}
export LUA_PATH="$PWD/$B/share/lua/5.4/?.lua;$PWD/$B/share/lua/5.4/?/init.lua;$PWD/spec/?.lua;;"
export LUA_CPATH="$PWD/$B/lib/lua/5.4/?.so;;"
export IC_HOST_BIN=$(find $B -name isolate-cluster -type f|head -1)
