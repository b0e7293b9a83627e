%% Erlang/OTP counterparts of bench/bench.lua's workloads, so that its
%% figures can be read beside a peer measured in the same run
%% (`bench.lua --peers` compiles this file into a temporary directory and
%% runs one workload per fresh VM, with the same counts):
%%
%%   erlc -o DIR bench/peers/bench_erlang.erl
%%   erl +S 2 -noshell -pa DIR -run bench_erlang main WORKLOAD N
%%
%% WORKLOAD is one of
%%   pingpong   two processes bounce one integer; round trips/s
%%   reqrep     a client calls a gen_server N times, one call at a time
%%              (gen_server:call with a 60 s timeout: a monitor/alias, a
%%              ref and a selective receive per call); round trips/s
%%   reqrep_ref the same with a plain `Server ! {Ref, self(), I}` and a
%%              selective receive on Ref (no monitor, no timeout)
%%   mpsc       two producers each send N {I, "x"} tuples to one consumer;
%%              messages/s into the consumer
%%   spawns     N processes spawned, each reports up and then waits idle;
%%              spawns/s until the last one is up, erlang:memory(processes)
%%              and resident memory (VmRSS) growth per idle process, then
%%              the time until all of them have stopped
%%   copy       a 10,000-entry map #{<<"keyI">> => I * 0.5} sent N times to
%%              another process, which receives it; ms per copy
%%   parallel   two processes each run the arithmetic loop of N steps, with
%%              one scheduler online and then two (best of three interleaved
%%              rounds of each, like bench.lua); the speed-up
%%
%% It prints "name value" lines: the figures, the OTP release and the
%% schedulers the VM was started with.
-module(bench_erlang).
-behaviour(gen_server).
-export([main/1]).
-export([init/1, handle_call/3, handle_cast/2]).

main([Workload, NStr]) ->
    try
        N = list_to_integer(NStr),
        io:format("otp ~s~nschedulers ~b~n",
                  [erlang:system_info(otp_release), erlang:system_info(schedulers)]),
        [io:format("~s ~.6f~n", [K, float(V)]) || {K, V} <- run(list_to_atom(Workload), N)],
        halt(0)
    catch
        C:E:St ->
            io:format(standard_error, "bench_erlang: ~p:~p ~p~n", [C, E, St]),
            halt(1)
    end;
main(_) ->
    io:format(standard_error, "usage: -run bench_erlang main WORKLOAD N~n", []),
    halt(2).

now_s() -> erlang:monotonic_time(nanosecond) / 1.0e9.

run(pingpong, N) -> [{"rate", pingpong(N)}];
run(reqrep, N) -> [{"rate", reqrep(N)}];
run(reqrep_ref, N) -> [{"rate", reqrep_ref(N)}];
run(mpsc, N) -> [{"rate", mpsc(N)}];
run(spawns, N) -> spawns(N);
run(copy, N) -> [{"ms", copy(N)}];
run(parallel, N) -> [{"speedup", parallel(N)}].

%% Ping-pong: the time is taken inside the pinging process, as in bench.lua.
pingpong(N) ->
    Main = self(),
    Pong = spawn(fun() -> receive {ping, P} -> pong_loop(P) end end),
    spawn(fun() ->
                  Pong ! {ping, self()},
                  T0 = now_s(),
                  ping_loop(Pong, 0, N),
                  Main ! {done, now_s() - T0}
          end),
    receive {done, Dt} -> N / Dt end.

pong_loop(Ping) ->
    receive
        stop -> ok;
        I -> Ping ! I, pong_loop(Ping)
    end.

ping_loop(Pong, N, N) -> Pong ! stop;
ping_loop(Pong, I, N) ->
    Pong ! I,
    receive I -> ping_loop(Pong, I + 1, N) end.

%% Request/reply through gen_server:call (this module is the server).
init([]) -> {ok, nostate}.
handle_call(Msg, _From, S) -> {reply, Msg, S}.
handle_cast(_Msg, S) -> {noreply, S}.

reqrep(N) ->
    {ok, Server} = gen_server:start(?MODULE, [], []),
    Main = self(),
    spawn(fun() ->
                  T0 = now_s(),
                  call_loop(Server, 1, N),
                  Main ! {done, now_s() - T0}
          end),
    receive {done, Dt} -> N / Dt end.

call_loop(_, I, N) when I > N -> ok;
call_loop(Server, I, N) ->
    I = gen_server:call(Server, I, 60000),
    call_loop(Server, I + 1, N).

%% Request/reply with a plain message and a selective receive on a ref.
reqrep_ref(N) ->
    Server = spawn(fun echo_loop/0),
    Main = self(),
    spawn(fun() ->
                  T0 = now_s(),
                  ref_loop(Server, 1, N),
                  Main ! {done, now_s() - T0}
          end),
    receive {done, Dt} -> N / Dt end.

echo_loop() ->
    receive
        {Ref, From, I} -> From ! {Ref, I}, echo_loop()
    end.

ref_loop(_, I, N) when I > N -> ok;
ref_loop(Server, I, N) ->
    Ref = make_ref(),
    Server ! {Ref, self(), I},
    receive {Ref, I} -> ref_loop(Server, I + 1, N) end.

%% Fan-in: the consumer reports when it has all 2N messages; the time runs
%% from before the producers start.
mpsc(N) ->
    Main = self(),
    Consumer = spawn(fun() -> consume(2 * N), Main ! consumed end),
    T0 = now_s(),
    [spawn(fun() -> produce(Consumer, 1, N) end) || _ <- [1, 2]],
    receive consumed -> 2 * N / (now_s() - T0) end.

consume(0) -> ok;
consume(K) -> receive {_, _} -> consume(K - 1) end.

produce(_, I, N) when I > N -> ok;
produce(C, I, N) -> C ! {I, "x"}, produce(C, I + 1, N).

%% Spawns: each process reports up and waits for `stop`.
spawns(N) ->
    Main = self(),
    erlang:garbage_collect(),
    M0 = erlang:memory(processes),
    R0 = rss_kb(),
    T0 = now_s(),
    Pids = [spawn(fun() -> Main ! up, receive stop -> Main ! down end end) || _ <- lists:seq(1, N)],
    wait_for(up, N),
    T1 = now_s(),
    M1 = erlang:memory(processes),
    R1 = rss_kb(),
    [P ! stop || P <- Pids],
    wait_for(down, N),
    T2 = now_s(),
    [{"rate", N / (T1 - T0)},
     {"process_kb", (M1 - M0) / 1024 / N}]
        ++ [{"rss_kb", (R1 - R0) / N} || is_number(R0), is_number(R1)]
        ++ [{"shutdown_ms", (T2 - T1) * 1000}].

wait_for(_, 0) -> ok;
wait_for(Msg, K) -> receive Msg -> wait_for(Msg, K - 1) end.

%% The VmRSS line of /proc/self/status in KB, or undefined.
rss_kb() ->
    case file:read_file("/proc/self/status") of
        {ok, B} ->
            case re:run(B, "VmRSS:\\s+(\\d+)", [{capture, all_but_first, list}]) of
                {match, [Kb]} -> list_to_integer(Kb);
                nomatch -> undefined
            end;
        _ -> undefined
    end.

%% Copy: the source builds the map once and sends it N times; the time runs
%% from the first send until the sink has received the last copy.
copy(N) ->
    Main = self(),
    Sink = spawn(fun() -> sink(N), Main ! sunk end),
    spawn(fun() ->
                  M = maps:from_list([{<<"key", (integer_to_binary(I))/binary>>, I * 0.5}
                                      || I <- lists:seq(1, 10000)]),
                  Main ! {start, now_s()},
                  [Sink ! M || _ <- lists:seq(1, N)]
          end),
    receive {start, T0} -> ok end,
    receive sunk -> (now_s() - T0) / N * 1000 end.

sink(0) -> ok;
sink(K) -> receive M when is_map(M) -> sink(K - 1) end.

%% Scaling: the same loop as bench.lua's (x = x + (i % 7) * 0.5).
parallel(K) ->
    Run = fun(Schedulers) ->
                  erlang:system_flag(schedulers_online, Schedulers),
                  Main = self(),
                  T0 = now_s(),
                  [spawn(fun() -> Main ! {computed, compute(1, K, 0.0)} end) || _ <- [1, 2]],
                  [receive {computed, _} -> ok end || _ <- [1, 2]],
                  now_s() - T0
          end,
    Max = erlang:system_info(schedulers),
    Rounds = [{Run(1), Run(min(2, Max))} || _ <- [1, 2, 3]],
    erlang:system_flag(schedulers_online, Max),
    lists:min([O || {O, _} <- Rounds]) / lists:min([T || {_, T} <- Rounds]).

compute(I, K, X) when I > K -> X;
compute(I, K, X) -> compute(I + 1, K, X + (I rem 7) * 0.5).
