# Turns a Lua source file into a C array, so the runtime needs no files at run time.
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" n)
math(EXPR bytes "${n} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
file(WRITE ${OUT} "/* generated from ${IN}; do not edit */\n#include <stddef.h>\n"
  "const char ic_runtime_lua[] = {${body} 0};\nconst size_t ic_runtime_lua_len = ${bytes};\n")
