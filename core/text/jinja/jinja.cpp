// SPDX-License-Identifier: MIT
// A Jinja interpreter for the subset chat templates use: Template, its builtins and one render's budget. The
// stages live beside it (text/jinja/internal.h lists them): source -> tokens (lexer, with the whitespace
// rules) -> statement tree (parser) -> output (evaluator).
#include "text/jinja/jinja.h"

#include "text/jinja/internal.h"

#include <ctime>

namespace together::jinja {

using namespace detail;

namespace {

constexpr int64_t kMaxRange = 100000; // items range() makes (Jinja's sandbox has the same limit)
constexpr int kMaxContextDepth = 100;  // nesting of the context (messages, tools) a render is given

Value markMessages(const json& messages, const std::vector<std::string>& keys)
{
    // Strings under untrusted keys (at any depth) are marked; everything else is template-side data.
    std::function<Value(const json&, bool)> conv = [&](const json& j, bool mark) -> Value {
        if (j.is_object()) {
            auto o = std::make_shared<Object>();
            for (auto& [k, x] : j.items())
                o->items.emplace_back(k, conv(x, mark || std::find(keys.begin(), keys.end(), k) != keys.end()));
            return Value(o);
        }
        if (j.is_array()) {
            Array a;
            for (auto& x : j)
                a.push_back(conv(x, mark));
            return makeArray(std::move(a));
        }
        return fromJson(j, mark);
    };
    return conv(messages, false);
}

} // namespace

struct Template::Impl {
    Body body;
};

Template::Template(const std::string& source)
    : m(std::make_unique<Impl>())
{
    try {
        m->body = parse(lex(source));
    } catch (const Error&) {
        throw;
    } catch (const std::exception& e) {
        // A case the checks above missed (a wrong-type access, a conversion out of range) is still an error
        // about this template, never an exception its callers do not expect.
        throw Error(std::string("chat template: cannot parse: ") + e.what());
    }
}

Template::~Template() = default;
Template::Template(Template&&) noexcept = default;

MarkedText Template::render(const json& context, const std::vector<std::string>& untrustedMessageKeys) const
{
    // This render's budget (text/jinja/internal.h), for every evaluator it makes on this thread.
    RenderBudget budget;
    struct Active {
        RenderBudget* saved;
        RenderBudget& mine;
        ~Active()
        {
            t_budget = saved;
            for (auto& weak : mine.callables)
                if (auto c = weak.lock())
                    c->call = nullptr;
        }
    } active{t_budget, budget};
    t_budget = &budget;
    Scope globals;
    globals.set("raise_exception", makeFn([](const Args& a) -> Value {
                    throw Error("chat template raised an error: " + (a.positional.empty() ? std::string() : toStr(a.positional[0]).s));
                }));
    globals.set("namespace", makeFn([](const Args& a) -> Value {
                    Value ns = makeObject();
                    ns.obj().isNamespace = true;
                    if (!a.positional.empty() && a.positional[0].isObject())
                        for (auto& [k, v] : a.positional[0].obj().items)
                            ns.obj().set(k, v);
                    for (auto& [k, v] : a.keyword)
                        ns.obj().set(k, v);
                    return ns;
                }));
    globals.set("range", makeFn([](const Args& a) -> Value {
                    int64_t start = 0, stop = 0, step = 1;
                    auto num = [](const Value& v) {
                        if (!v.isNumber())
                            limitError("range() needs numbers");
                        return v.isInt() ? v.integer() : floatToInt(v.num(), 0);
                    };
                    if (a.positional.size() == 1)
                        stop = num(a.positional[0]);
                    else if (a.positional.size() >= 2) {
                        start = num(a.positional[0]);
                        stop = num(a.positional[1]);
                        if (a.positional.size() > 2)
                            step = num(a.positional[2]);
                    }
                    if (step == 0)
                        throw Error("chat template: range() step cannot be zero");
                    // The length first (in 128 bits: stop - start can overflow 64), refused beyond the limit as
                    // Jinja's sandbox does, so range(10**12) costs nothing.
                    const __int128 span = step > 0 ? static_cast<__int128>(stop) - start : static_cast<__int128>(start) - stop;
                    const __int128 absStep = step > 0 ? static_cast<__int128>(step) : -static_cast<__int128>(step);
                    const __int128 count = span <= 0 ? 0 : (span + absStep - 1) / absStep;
                    if (count > kMaxRange)
                        limitError("range() of more than " + std::to_string(kMaxRange) + " items (the limit)");
                    Array out;
                    for (int64_t k = 0; k < static_cast<int64_t>(count); ++k)
                        out.push_back(Value(static_cast<int64_t>(start + static_cast<__int128>(k) * step))); // within [start, stop)
                    return makeArray(std::move(out));
                }));
    globals.set("dict", makeFn([](const Args& a) -> Value {
                    Value o = makeObject();
                    for (auto& [k, v] : a.keyword)
                        o.obj().set(k, v);
                    return o;
                }));
    globals.set("strftime_now", makeFn([](const Args& a) -> Value {
                    std::string fmt = a.positional.empty() ? "%Y-%m-%d" : toStr(a.positional[0]).s;
                    std::time_t t = std::time(nullptr);
                    std::tm tm{};
                    localtime_r(&t, &tm);
                    char buf[256];
                    size_t n = std::strftime(buf, sizeof buf, fmt.c_str(), &tm);
                    return Value(std::string(buf, n));
                }));
    Scope scope(&globals);
    // The context (the messages of a chat, tools) is converted recursively: its nesting is checked first,
    // without recursion. No chat comes near this.
    {
        std::vector<std::pair<const json*, int>> todo{{&context, 0}};
        while (!todo.empty()) {
            auto [j, d] = todo.back();
            todo.pop_back();
            if (d > kMaxContextDepth)
                throw Error("chat template: the messages nest deeper than " + std::to_string(kMaxContextDepth) + " levels");
            if (j->is_structured())
                for (auto& x : *j)
                    todo.push_back({&x, d + 1});
        }
    }
    if (context.is_object()) {
        for (auto& [k, v] : context.items()) {
            if (k == "messages")
                scope.set(k, markMessages(v, untrustedMessageKeys));
            else
                scope.set(k, fromJson(v, false));
        }
    }
    Str out;
    Evaluator ev(out);
    try {
        ev.exec(m->body, scope);
    } catch (const BreakSignal&) {
        throw Error("chat template: 'break' outside a loop");
    } catch (const ContinueSignal&) {
        throw Error("chat template: 'continue' outside a loop");
    } catch (const Error&) {
        throw;
    } catch (const std::exception& e) {
        throw Error(std::string("chat template: cannot render: ") + e.what()); // (see the constructor)
    }
    MarkedText r;
    r.text = std::move(out.s);
    r.untrusted = out.mark;
    r.untrusted.resize(r.text.size(), false);
    return r;
}

} // namespace together::jinja
